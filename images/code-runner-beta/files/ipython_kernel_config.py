# Loaded by every ipykernel of the venv (sys.prefix/etc/ipython). Importing the heavy modules
# when the kernel starts moves ~0.5 s from the user's first cell into the pre-started kernel;
# the names are removed again, so the user's namespace starts empty.
c = get_config()  # noqa: F821
c.IPKernelApp.exec_lines = [
    "import numpy, pandas, matplotlib, matplotlib.pyplot",
    "del numpy, pandas, matplotlib",
]
c.IPKernelApp.matplotlib = "inline"
