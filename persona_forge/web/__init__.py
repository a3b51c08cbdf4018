"""`forge view` and `forge annotate`: a local web app to look at a run and judge it by hand."""
