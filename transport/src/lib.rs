//! Site-to-site transport: QUIC endpoints secured by mutual TLS, message framing, development
//! certificates and the userspace WAN relay used to make loopback behave like a WAN
//! (see DESIGN.md §2, §6–7).
