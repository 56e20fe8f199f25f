"""Template tasks: templates, their validation and sampling (``templates``), and the
catalogue of named tasks (``catalogue``)."""
