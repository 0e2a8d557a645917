//! Client of the wrenn-agent protocol over a unix socket.
