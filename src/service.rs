//! Telling a service manager that a box or a mount is ready: systemd's `Type=notify`, the one
//! datagram `READY=1` to the socket `$NOTIFY_SOCKET` names, as `sd_notify(3)` sends it. So a
//! unit ordered after a mount starts only once the mount answers, and `systemctl start` returns
//! then. Run by anything else (no `$NOTIFY_SOCKET`), it does nothing.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Says `READY=1` to the service manager, if one is listening; a failure is logged, not fatal
/// (the service works; only its manager is not told).
pub fn notify_ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, b"READY=1") {
        log::warn!(
            "cannot tell the service manager we are ready ({}): {e}",
            socket.to_string_lossy()
        );
    }
}

/// Sends `message` to the datagram socket at `path`; a leading `@` names an abstract socket.
fn send(path: &OsStr, message: &[u8]) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => send_abstract(&socket, name, message),
        None => socket.send_to(message, path).map(drop),
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], message: &[u8]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(message, &addr).map(drop)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<()> {
    Err(io::Error::other("abstract sockets exist only on Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_reaches_a_socket_by_path_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("dune-cachefs-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
            let listener = UnixDatagram::bind_addr(&addr).unwrap();
            send(OsStr::new(&format!("@{name}")), b"READY=1").unwrap();
            let n = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1");
        }
    }
}
