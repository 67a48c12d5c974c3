//! Gatehouse's SSH bastion: agents run exec, shell and pty sessions on hosts through the gateway,
//! which holds the host credentials, decides each command, masks output and records the session.

#![forbid(unsafe_code)]
