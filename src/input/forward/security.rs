//! `<security>`: the shared-key handshake of the Forward Protocol v1, as Fluentd's in_forward
//! checks it.
//!
//! The server opens with `HELO` (a random nonce and user-auth salt); the client answers `PING`
//! with `sha512_hex(shared_key_salt + client_hostname + nonce + shared_key)` and, with
//! `user_auth`, `sha512_hex(auth_salt + username + password)`; the server replies `PONG` with its
//! own digest `sha512_hex(shared_key_salt + self_hostname + nonce + shared_key)` so the client can
//! check the server too. `<client>` sections restrict which addresses may connect (with
//! `allow_anonymous_source false`) and give per-client shared keys and user lists.

use std::net::{IpAddr, ToSocketAddrs};

use crate::config::{ConfigError, Element};

use super::protocol::{constant_time_eq, sha512_hex, Ping};

/// A `<user>`: user name and password for `user_auth`.
#[derive(Clone)]
pub struct User {
    /// The user name.
    pub username: String,
    password: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Option<Network> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Network { addr, prefix })
    }

    /// Whether `ip` is inside the network (IPv4-mapped IPv6 peers count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// A `<client>` section.
#[derive(Clone)]
pub struct Client {
    /// The addresses this rule covers.
    pub network: Network,
    shared_key: Option<String>,
    /// User names this client may authenticate as (all when empty).
    pub users: Vec<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("network", &self.network)
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

/// The `<security>` section.
#[derive(Clone)]
pub struct Security {
    /// The host name this server declares in PONG.
    pub self_hostname: String,
    shared_key: String,
    /// Whether PING must carry a valid user name and password digest.
    pub user_auth: bool,
    /// Whether addresses that no `<client>` covers may connect.
    pub allow_anonymous_source: bool,
    users: Vec<User>,
    clients: Vec<Client>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("self_hostname", &self.self_hostname)
            .field("user_auth", &self.user_auth)
            .field("allow_anonymous_source", &self.allow_anonymous_source)
            .field("users", &self.users)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

fn required(section: &Element, key: &str) -> Result<String, ConfigError> {
    section.string(key).ok_or_else(|| {
        ConfigError::at(
            &section.pos,
            format!("'{key}' parameter is required in {}", section.header()),
        )
    })
}

impl Security {
    /// Reads a `<security>` section with Fluentd's rules and messages.
    pub fn configure(section: &Element) -> Result<Security, ConfigError> {
        let self_hostname = required(section, "self_hostname")?;
        let shared_key = required(section, "shared_key")?;
        let user_auth = section.bool("user_auth")?.unwrap_or(false);
        let allow_anonymous_source = section.bool("allow_anonymous_source")?.unwrap_or(true);
        let mut users = Vec::new();
        for u in section.sections("user") {
            users.push(User {
                username: required(u, "username")?,
                password: required(u, "password")?,
            });
        }
        let mut clients = Vec::new();
        for c in section.sections("client") {
            let host = c.param("host").cloned();
            let network = c.param("network").cloned();
            let shared_key = c.string("shared_key");
            let users = c.array("users")?.unwrap_or_default();
            let network = match (host, network) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::at(
                        &c.pos,
                        "both of 'host' and 'network' are specified for client",
                    ))
                }
                (None, None) => {
                    return Err(ConfigError::at(
                        &c.pos,
                        "Either of 'host' and 'network' must be specified for client",
                    ))
                }
                (Some(h), None) => {
                    let ip = (h.value.trim(), 0)
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next())
                        .map(|a| a.ip())
                        .ok_or_else(|| {
                            ConfigError::at(
                                &h.value_pos,
                                format!("host '{}' cannot be resolved", h.value),
                            )
                        })?;
                    Network {
                        addr: ip,
                        prefix: if ip.is_ipv4() { 32 } else { 128 },
                    }
                }
                (None, Some(n)) => Network::parse(&n.value).ok_or_else(|| {
                    ConfigError::at(
                        &n.value_pos,
                        format!("network '{}' address format is invalid", n.value),
                    )
                })?,
            };
            clients.push(Client {
                network,
                shared_key,
                users,
            });
        }
        if user_auth && users.is_empty() {
            return Err(ConfigError::at(
                &section.pos,
                "<user> sections required if user_auth enabled",
            ));
        }
        if !allow_anonymous_source && clients.is_empty() {
            return Err(ConfigError::at(
                &section.pos,
                "<client> sections required if allow_anonymous_source disabled",
            ));
        }
        Ok(Security {
            self_hostname,
            shared_key,
            user_auth,
            allow_anonymous_source,
            users,
            clients,
        })
    }

    /// Checks a PING from `peer` (None for sockets without an address) against the nonce and
    /// salt this connection's HELO sent. On success returns the PONG to send; on failure the
    /// reason to put in the failure PONG.
    pub fn check_ping(
        &self,
        ping: &Ping,
        peer: Option<IpAddr>,
        nonce: &[u8],
        auth_salt: &[u8],
    ) -> Result<Vec<u8>, String> {
        let client = peer.and_then(|ip| self.clients.iter().find(|c| c.network.contains(ip)));
        if client.is_none() && !self.allow_anonymous_source {
            let who = peer.map(|p| p.to_string()).unwrap_or_default();
            return Err(format!("anonymous source host '{who}' denied"));
        }
        let shared_key = client
            .and_then(|c| c.shared_key.as_deref())
            .unwrap_or(&self.shared_key);
        let expected = sha512_hex(&[
            &ping.shared_key_salt,
            &ping.hostname,
            nonce,
            shared_key.as_bytes(),
        ]);
        if !constant_time_eq(expected.as_bytes(), &ping.shared_key_digest) {
            return Err("shared_key mismatch".into());
        }
        if self.user_auth {
            let allowed = |u: &User| match client {
                Some(c) if !c.users.is_empty() => c.users.contains(&u.username),
                _ => true,
            };
            let ok = self
                .users
                .iter()
                .filter(|u| u.username.as_bytes() == ping.username.as_slice() && allowed(u))
                .any(|u| {
                    let d = sha512_hex(&[auth_salt, u.username.as_bytes(), u.password.as_bytes()]);
                    constant_time_eq(d.as_bytes(), &ping.password_digest)
                });
            if !ok {
                return Err("username/password mismatch".into());
            }
        }
        let digest = sha512_hex(&[
            &ping.shared_key_salt,
            self.self_hostname.as_bytes(),
            nonce,
            shared_key.as_bytes(),
        ]);
        Ok(super::protocol::pong_ok(&self.self_hostname, &digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack;

    fn section(text: &str) -> Element {
        let root = crate::config::parser::parse_str(text, "t.conf", ".".into()).unwrap();
        root.elements.into_iter().next().unwrap()
    }

    fn ping(key: &str, nonce: &[u8], user: &str, pass: &str, auth: &[u8]) -> Ping {
        let salt = b"client-salt".to_vec();
        Ping {
            hostname: b"client.example".to_vec(),
            shared_key_digest: sha512_hex(&[&salt, b"client.example", nonce, key.as_bytes()])
                .into_bytes(),
            shared_key_salt: salt,
            username: user.as_bytes().to_vec(),
            password_digest: if user.is_empty() {
                Vec::new()
            } else {
                sha512_hex(&[auth, user.as_bytes(), pass.as_bytes()]).into_bytes()
            },
        }
    }

    #[test]
    fn shared_key_success_and_failure() {
        let s = Security::configure(&section(
            "<security>\nself_hostname srv\nshared_key k1\n</security>\n",
        ))
        .unwrap();
        let nonce = [7u8; 16];
        let ip = Some("127.0.0.1".parse().unwrap());
        let pong = s.check_ping(&ping("k1", &nonce, "", "", &[]), ip, &nonce, &[1; 16]);
        let v = msgpack::to_json_value(&pong.unwrap()).unwrap();
        assert_eq!(v[0], "PONG");
        assert_eq!(v[1], true);
        assert_eq!(v[3], "srv");
        let want = sha512_hex(&[b"client-salt", b"srv", &nonce, b"k1"]);
        assert_eq!(v[4], want.as_str());
        assert_eq!(
            s.check_ping(&ping("k2", &nonce, "", "", &[]), ip, &nonce, &[1; 16]),
            Err("shared_key mismatch".into())
        );
        // A digest for another nonce (replay) fails.
        assert!(s
            .check_ping(&ping("k1", &[8; 16], "", "", &[]), ip, &nonce, &[1; 16])
            .is_err());
    }

    #[test]
    fn users_and_clients() {
        let s = Security::configure(&section(
            "<security>\nself_hostname srv\nshared_key k1\nuser_auth true\nallow_anonymous_source false\n\
             <user>\nusername alice\npassword pw\n</user>\n<user>\nusername bob\npassword pb\n</user>\n\
             <client>\nnetwork 127.0.0.0/8\nshared_key ck\nusers alice\n</client>\n</security>\n",
        ))
        .unwrap();
        let nonce = [3u8; 16];
        let auth = [4u8; 16];
        let local = Some("127.0.0.2".parse().unwrap());
        assert!(s
            .check_ping(
                &ping("ck", &nonce, "alice", "pw", &auth),
                local,
                &nonce,
                &auth
            )
            .is_ok());
        // The client's own key replaces the global one.
        assert!(s
            .check_ping(
                &ping("k1", &nonce, "alice", "pw", &auth),
                local,
                &nonce,
                &auth
            )
            .is_err());
        // bob is not among this client's users; wrong password fails.
        assert_eq!(
            s.check_ping(
                &ping("ck", &nonce, "bob", "pb", &auth),
                local,
                &nonce,
                &auth
            ),
            Err("username/password mismatch".into())
        );
        assert!(s
            .check_ping(
                &ping("ck", &nonce, "alice", "x", &auth),
                local,
                &nonce,
                &auth
            )
            .is_err());
        let other = Some("10.1.1.1".parse().unwrap());
        assert_eq!(
            s.check_ping(
                &ping("k1", &nonce, "bob", "pb", &auth),
                other,
                &nonce,
                &auth
            ),
            Err("anonymous source host '10.1.1.1' denied".into())
        );
    }

    #[test]
    fn config_errors() {
        for (text, msg) in [
            ("<security>\nshared_key k\n</security>\n", "'self_hostname' parameter is required"),
            ("<security>\nself_hostname h\nshared_key k\nuser_auth true\n</security>\n", "<user> sections required"),
            ("<security>\nself_hostname h\nshared_key k\nallow_anonymous_source false\n</security>\n", "<client> sections required"),
            ("<security>\nself_hostname h\nshared_key k\n<client>\nnetwork nope\n</client>\n</security>\n", "address format is invalid"),
            ("<security>\nself_hostname h\nshared_key k\n<client>\n</client>\n</security>\n", "Either of 'host' and 'network'"),
        ] {
            let e = Security::configure(&section(text)).unwrap_err();
            assert!(e.message.contains(msg), "{} vs {msg}", e.message);
        }
    }

    #[test]
    fn networks() {
        let n = Network::parse("192.168.0.0/16").unwrap();
        assert!(n.contains("192.168.4.5".parse().unwrap()));
        assert!(n.contains("::ffff:192.168.4.5".parse().unwrap()));
        assert!(!n.contains("192.169.0.1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Network::parse("1.2.3.4/33").is_none());
    }
}
