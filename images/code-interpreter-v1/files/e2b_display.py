"""IPython formatters E2B's results carry (contract e2b-api.md §6.2): a pandas DataFrame gets
an `e2b/data` representation, `{column: [values]}`, beside its HTML and text.

Run once per kernel at start (ipython_kernel_config.py); it defines nothing in the user's
namespace.
"""

import json

from IPython import get_ipython
from IPython.core.formatters import BaseFormatter
from traitlets import ObjectName, Unicode


class E2BDataFormatter(BaseFormatter):
    """The `e2b/data` MIME type: a JSON object."""

    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")
    _return_type = dict


def dataframe_data(df):
    """`{column: [values]}` with JSON values (NaN as null, dates as ISO strings)."""
    split = json.loads(df.to_json(orient="split", date_format="iso", default_handler=str))
    cols = [str(c) for c in split["columns"]]
    return {c: [row[i] for row in split["data"]] for i, c in enumerate(cols)}


def register():
    ip = get_ipython()
    if ip is None:
        return
    formatter = E2BDataFormatter(parent=ip.display_formatter)
    ip.display_formatter.formatters[formatter.format_type] = formatter
    formatter.for_type_by_name("pandas.core.frame", "DataFrame", dataframe_data)


register()
