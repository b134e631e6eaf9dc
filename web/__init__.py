"""The dashboard's static files (HTML, ES modules, CSS, vendored uPlot), served by api/routes/ui.py under /ui.

A package only so that `pip install .` (and so the Docker image) ships these files beside the API's code.
"""
