//! The binary's only `unsafe`: a `pre_exec` hook that ties a worker's life to
//! the gate's. An orphan worker must never outlive a gate that crashed or was
//! SIGKILLed (it would hold its socket and memory with nobody to stop it), and
//! only the kernel's parent-death signal covers that case; setting it needs
//! code between fork and exec, which std and tokio expose only as `unsafe`.
#![allow(unsafe_code)]

use nix::sys::signal::Signal;
use nix::unistd::{getppid, Pid};

/// The worker gets SIGTERM when the gate dies, however it dies.
///
/// Linux sends the signal when the *thread* that forked the child exits, so
/// workers must be spawned from threads that live as long as the gate: the
/// runtime's threads do (never spawn from `spawn_blocking`).
pub fn die_with_gate(cmd: &mut tokio::process::Command) {
    let gate = Pid::this();
    // SAFETY: the closure runs in the child between fork and exec; it makes
    // two async-signal-safe syscalls (prctl, getppid), takes no lock and
    // allocates nothing (nix errors are plain errno values).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // The gate may have died between fork and prctl: then no signal
            // would ever come, so do not start at all.
            if getppid() != gate {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}
