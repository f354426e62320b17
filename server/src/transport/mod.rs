//! Transports: how client bytes reach the cores. Raw TCP now; TLS, WebSocket
//! and QUIC carry the same frames into the same core logic later.

pub mod tcp;
