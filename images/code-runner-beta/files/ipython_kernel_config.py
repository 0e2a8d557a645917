# Loaded by every ipykernel of the venv (sys.prefix/etc/ipython). Importing the heavy modules
# when the kernel starts moves ~0.5 s from the user's first cell into the pre-started kernel;
# the names are removed again, so the user's namespace starts empty. The last line tells the
# capsule's readiness probe (files/start-jupyter.py) that a kernel is ready: start-up lines
# run after the kernel bound its sockets, so requests sent from then on wait only for its
# event loop to start.
c = get_config()  # noqa: F821
c.IPKernelApp.exec_lines = [
    "import numpy, pandas, matplotlib, matplotlib.pyplot",
    "del numpy, pandas, matplotlib",
    "__import__('pathlib').Path('/dev/shm/wrenn-jupyter-ready').touch()",
]
c.IPKernelApp.matplotlib = "inline"
