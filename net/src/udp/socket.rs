//! Socket setup for the fast path. Every option that decides where packets
//! go is set explicitly here, never left to the system default.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{Transport, UdpConfig, UdpError};

/// An open, non-blocking socket and where its datagrams go.
pub(crate) struct Opened {
    pub socket: Socket,
    pub targets: Vec<SockAddr>,
    pub local_addr: SocketAddr,
}

fn err(op: &'static str) -> impl FnOnce(std::io::Error) -> UdpError {
    move |source| UdpError::Socket { op, source }
}

fn check_loopback(cfg: &UdpConfig, what: &'static str, addr: Ipv4Addr) -> Result<(), UdpError> {
    if cfg.loopback_only && !addr.is_loopback() {
        return Err(UdpError::NotLoopback { what, addr });
    }
    Ok(())
}

/// Checks the configuration without touching the system.
pub(crate) fn validate(cfg: &UdpConfig) -> Result<(), UdpError> {
    match &cfg.transport {
        Transport::Multicast { group, interface } => {
            if !group.ip().is_multicast() {
                return Err(UdpError::NotMulticast(*group.ip()));
            }
            if interface.is_unspecified() {
                return Err(UdpError::UnspecifiedInterface);
            }
            check_loopback(cfg, "multicast interface", *interface)?;
            if !(1..=255).contains(&cfg.multicast_ttl) {
                return Err(UdpError::BadTtl(cfg.multicast_ttl));
            }
        }
        Transport::Unicast { bind, peers } => {
            check_loopback(cfg, "bind address", *bind.ip())?;
            for p in peers {
                let ip = *p.ip();
                if ip.is_multicast() || ip.is_unspecified() || ip.is_broadcast() {
                    return Err(UdpError::NotUnicast(ip));
                }
                check_loopback(cfg, "peer", ip)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn open(cfg: &UdpConfig) -> Result<Opened, UdpError> {
    validate(cfg)?;
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    socket.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    socket.set_cloexec(true).map_err(err("FD_CLOEXEC"))?;
    // The kernel caps these at net.core.{r,w}mem_max; a smaller buffer only
    // means more drops under bursts, which the counters show.
    socket
        .set_recv_buffer_size(cfg.socket_buffer)
        .map_err(err("SO_RCVBUF"))?;
    socket
        .set_send_buffer_size(cfg.socket_buffer)
        .map_err(err("SO_SNDBUF"))?;
    socket
        .set_reuse_address(true)
        .map_err(err("SO_REUSEADDR"))?;
    let targets = match &cfg.transport {
        Transport::Multicast { group, interface } => {
            // Several receivers on one host share the group port.
            socket.set_reuse_port(true).map_err(err("SO_REUSEPORT"))?;
            // Bound to the group address, the socket gets only this group's
            // traffic, not every group some other socket on the host joined.
            socket
                .bind(&SocketAddr::V4(*group).into())
                .map_err(err("bind"))?;
            socket
                .set_multicast_all_v4(false)
                .map_err(err("IP_MULTICAST_ALL"))?;
            socket
                .join_multicast_v4(group.ip(), interface)
                .map_err(err("IP_ADD_MEMBERSHIP"))?;
            socket
                .set_multicast_if_v4(interface)
                .map_err(err("IP_MULTICAST_IF"))?;
            socket
                .set_multicast_ttl_v4(cfg.multicast_ttl)
                .map_err(err("IP_MULTICAST_TTL"))?;
            socket
                .set_multicast_loop_v4(cfg.multicast_loop)
                .map_err(err("IP_MULTICAST_LOOP"))?;
            vec![SockAddr::from(*group)]
        }
        Transport::Unicast { bind, peers } => {
            socket
                .bind(&SocketAddr::V4(*bind).into())
                .map_err(err("bind"))?;
            peers.iter().map(|p| SockAddr::from(*p)).collect()
        }
    };
    let local_addr = socket
        .local_addr()
        .map_err(err("getsockname"))?
        .as_socket()
        .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
    Ok(Opened {
        socket,
        targets,
        local_addr,
    })
}

/// Parses a kernel `sockaddr` (as filled in by recvmsg) into a SocketAddr.
/// Unknown families or short buffers give `None`.
pub(crate) fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family as i32 {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        _ => None,
    }
}
