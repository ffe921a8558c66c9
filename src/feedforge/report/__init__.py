"""The HTML report (``feedforge report``): the 7 steps of the system with the numbers of
one work directory's artifacts, one self-contained page
(:func:`feedforge.report.build.write_report`)."""
