# Jupyter Server as the official SDK's code runner expects it (contract §12): reachable only
# through the capsule's port proxy, so no token, no password, no XSRF check and any origin.
c = get_config()  # noqa: F821
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = 8888
c.ServerApp.port_retries = 0
c.ServerApp.open_browser = False
c.ServerApp.allow_root = True
c.ServerApp.root_dir = "/root"
c.IdentityProvider.token = ""
c.ServerApp.password = ""
c.ServerApp.disable_check_xsrf = True
c.ServerApp.allow_origin = "*"
c.ServerApp.allow_remote_access = True
# Nothing but the server itself: the terminals extension (enabled by its own file in
# jupyter_server_config.d) is switched off, as are terminals.
c.ServerApp.jpserver_extensions = {"jupyter_server_terminals": False}
c.ServerApp.terminals_enabled = False
c.MappingKernelManager.default_kernel_name = "wrenn"
# The kernel WebSocket sends each frame at once (files/wrenn_jupyter.py): without it Nagle's
# algorithm holds every frame of a cell's answer after the first for the client's delayed ACK.
c.ServerApp.kernel_websocket_connection_class = "wrenn_jupyter.NoDelayChannelsConnection"
