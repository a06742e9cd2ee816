"""JupyterLab for this checkout: the walkthrough opens first.

Jupyter reads no configuration from the working directory (jupyter_core stopped doing so in 4.11.2: CVE-2022-39286),
so name this folder when starting it from the repository's root:

    JUPYTER_CONFIG_PATH=.jupyter jupyter lab

(`jupyter lab notebooks/walkthrough.ipynb` opens the walkthrough too, with notebooks/ as the file browser's root.)
"""

c = get_config()  # noqa: F821  (defined by Jupyter when it reads this file)
c.LabApp.default_url = "/lab/tree/notebooks/walkthrough.ipynb"
