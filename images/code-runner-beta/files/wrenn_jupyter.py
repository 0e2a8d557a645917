"""Jupyter Server's kernel WebSocket with TCP_NODELAY (set by files/jupyter_server_config.py).

Jupyter Server answers a cell with several small WebSocket frames (status busy, execute_input,
the result, status idle, execute_reply), each its own write. Tornado leaves Nagle's algorithm
on, so every frame after the first waits for the peer's ACK of the one before, and the peer
(the port proxy, or any client) delays that ACK by 40 ms: a trivial cell took ~48 ms instead
of ~6 ms. Only the socket's send timing changes; what is sent stays the same.
"""

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection


class NoDelayChannelsConnection(ZMQChannelsWebsocketConnection):
    """Jupyter Server's ZMQ ↔ WebSocket relay, sending each frame at once."""

    def connect(self):
        """Turns Nagle's algorithm off for this WebSocket, then connects as usual."""
        self.websocket_handler.set_nodelay(True)
        return super().connect()
