# Loaded by every ipykernel of the venv (sys.prefix/etc/ipython). As in code-runner-beta, the
# heavy modules are imported when the kernel starts and their names removed again; then E2B's
# result formatters (e2b_display.py) are registered, in a namespace of their own. The last line
# is code-runner-beta's readiness mark (its start-jupyter.py waits for it).
c = get_config()  # noqa: F821
c.IPKernelApp.exec_lines = [
    "import numpy, pandas, matplotlib, matplotlib.pyplot",
    "del numpy, pandas, matplotlib",
    "exec(\"__import__('runpy').run_path('/opt/wrenn/e2b_display.py')\", {})",
    "__import__('pathlib').Path('/dev/shm/wrenn-jupyter-ready').touch()",
]
c.IPKernelApp.matplotlib = "inline"
