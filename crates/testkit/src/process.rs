//! Child processes in their own process group, killed as a group when the guard drops — so a
//! failing test leaves no stray server behind.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A running child process (and everything it spawned) in its own process group.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    pgid: i32,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group. Standard input is closed: nothing may wait on a prompt.
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<ChildGuard> {
        cmd.stdin(std::process::Stdio::null());
        Self::spawn_with_stdio(name, cmd)
    }

    /// Spawns `cmd` in a new process group, keeping the stdio the caller configured.
    pub fn spawn_with_stdio(name: &str, mut cmd: Command) -> std::io::Result<ChildGuard> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn()?;
        let pgid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        Ok(ChildGuard {
            child: Some(child),
            pgid,
            name: name.to_string(),
        })
    }

    /// The process group id (= the child's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Mutable access to the child (for its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Whether the child has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child_mut().try_wait(), Ok(Some(_)))
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: Signal) {
        let _ = killpg(Pid::from_raw(self.pgid), signal);
    }

    /// Stops the group: `signal` first, SIGKILL after `grace`; reaps the child.
    pub fn stop(&mut self, signal: Signal, grace: Duration) {
        self.signal(signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.has_exited() && !group_alive(self.pgid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(Signal::SIGKILL);
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
        // Wait for grandchildren to go too.
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(self.pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Signal::SIGTERM, Duration::from_secs(5));
    }
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    // killpg with signal 0 fails with ESRCH once the group is empty. Zombies of already-exited
    // children count as alive until reaped, which `stop` does.
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Runs `cmd` to completion with a deadline, capturing output; kills its group on timeout.
pub fn run_with_timeout(
    mut cmd: Command,
    limit: Duration,
) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_thread = std::thread::spawn(move || read_all(stdout));
    let err_thread = std::thread::spawn(move || read_all(stderr));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

fn read_all<R: std::io::Read>(r: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}
