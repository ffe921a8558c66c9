"""The approximate-nearest-neighbour index over item embeddings, and exact top-k."""
