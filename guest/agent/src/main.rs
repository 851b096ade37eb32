//! `vulcan-agent`: PID 1 of a Vulcan micro-VM.
//!
//! It mounts the kernel file systems, loads the virtio modules shipped in the initramfs
//! (`/vulcan/modules`, loaded in name order: the host numbers them), mounts the host's
//! `/usr` read-only over virtio-9p, opens the virtio-serial port named
//! [`PORT_NAME`], says [`FromGuest::Ready`], then runs exactly one
//! [`RunRequest`]: the work directory on a tmpfs, the program as an unprivileged user
//! in a cgroup with the request's memory and process limits, stdout/stderr streamed
//! back as they are produced, then [`FromGuest::Exited`]. Finally it powers the VM off.
//!
//! The agent is the only trusted code in the guest; the workload is hostile. The host
//! trusts nothing the agent says beyond the protocol's bounds either.

mod setup;
mod work;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use vulcan_guest_proto::{read_frame, FromGuest, RunRequest, MAX_CHUNK, MAX_RUN_FRAME, PORT_NAME};

fn main() {
    let port = match boot() {
        Ok(port) => port,
        Err(e) => {
            // No port to report on: the console (if any) is all there is; the host sees
            // the VM power off without Ready and reports a boot failure.
            eprintln!("vulcan-agent: boot failed: {e}");
            setup::power_off();
        }
    };
    let port = Arc::new(Mutex::new(port));
    if let Err(e) = serve(&port) {
        send(&port, &FromGuest::Failed(e));
    }
    setup::power_off();
}

/// Everything up to and including `Ready`.
fn boot() -> Result<File, String> {
    setup::mount_kernel_filesystems()?;
    setup::load_modules()?;
    setup::mount_usr()?;
    let mut port = setup::open_port(PORT_NAME)?;
    port.write_all(&FromGuest::Ready.to_frame().map_err(|e| e.to_string())?)
        .and_then(|()| port.flush())
        .map_err(|e| format!("cannot write to the port: {e}"))?;
    Ok(port)
}

/// Send one message; a broken port means the host is gone, and nothing is left to do.
fn send(port: &Mutex<File>, msg: &FromGuest) {
    let Ok(frame) = msg.to_frame() else { return };
    let mut port = port
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if port.write_all(&frame).and_then(|()| port.flush()).is_err() {
        setup::power_off();
    }
}

/// Receive the request, run it, report the outcome.
fn serve(port: &Arc<Mutex<File>>) -> Result<(), String> {
    let mut reader = port
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .try_clone()
        .map_err(|e| format!("cannot clone the port: {e}"))?;
    let (tag, payload) = read_frame(&mut reader, MAX_RUN_FRAME)
        .map_err(|e| format!("cannot read the run request: {e}"))?
        .ok_or("the host closed the port before sending a request")?;
    let req = RunRequest::decode(tag, &payload).map_err(|e| e.to_string())?;
    drop(payload);
    let program = req
        .argv
        .first()
        .ok_or("the request has no program")?
        .clone();

    work::prepare(&req)?;
    let cgroup = work::Cgroup::create(&req)?;

    let mut cmd = Command::new(&program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .envs(req.env.iter().filter_map(|kv| kv.split_once('=')))
        .current_dir(work::WORK_DIR)
        .uid(req.uid)
        .gid(req.uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cgroup
        .spawn_inside(&mut cmd)
        .map_err(|e| format!("cannot start {program}: {e}"))?;

    let stdin = child.stdin.take();
    let input = req.stdin;
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // The workload may never read stdin: a broken pipe is not an error.
            let _ = stdin.write_all(&input);
        }
    });
    let pumps: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| (Box::new(s) as Box<dyn Read + Send>, true)),
        child
            .stderr
            .take()
            .map(|s| (Box::new(s) as Box<dyn Read + Send>, false)),
    ]
    .into_iter()
    .flatten()
    .map(|(stream, is_stdout)| {
        let port = port.clone();
        std::thread::spawn(move || pump(stream, &port, is_stdout))
    })
    .collect();

    let status = child
        .wait()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    // Background processes of the workload must not keep the pipes open.
    cgroup.kill_all();
    for p in pumps {
        let _ = p.join();
    }
    let _ = writer.join();
    send(
        port,
        &FromGuest::Exited {
            code: status.code(),
            signal: status.signal(),
            oom_killed: cgroup.oom_killed(),
        },
    );
    Ok(())
}

/// Forward a stream in chunks as they arrive.
fn pump(mut stream: Box<dyn Read + Send>, port: &Mutex<File>, is_stdout: bool) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let chunk = buf[..n].to_vec();
                let msg = if is_stdout {
                    FromGuest::Stdout(chunk)
                } else {
                    FromGuest::Stderr(chunk)
                };
                send(port, &msg);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
