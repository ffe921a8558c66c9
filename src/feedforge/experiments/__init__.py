"""Online experiments: definitions, assignment, exposure, online metrics, analysis."""
