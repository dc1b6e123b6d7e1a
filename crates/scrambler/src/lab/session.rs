//! A lab VM that outlives one command, so `lab up`, `lab test`, `lab inject`, `lab status`
//! and `lab down` work step by step on a kernel without ESP too (`lab run` uses one for
//! its tour and powers it off at the end).
//!
//! `lab up` starts a detached `scrambler lab vm-serve`, which boots the stock kernel with
//! a second serial port (the guest's `/dev/ttyS1`) behind the unix socket
//! `/run/scrambler-lab/<name>.vm.sock`. In the guest, `scrambler lab vm-agent` reads
//! requests from that port — one JSON line `{"id", "argv"}` each — runs `scrambler <argv>`
//! there and answers with its output lines, `<id> 1 <line>` (stdout) or `<id> 2 <line>`
//! (stderr), then `<id> X <exit status>`; while the command is silent the agent says
//! `<id> K` every [`HEARTBEAT`], so the host tells a guest that works quietly from one that
//! hangs. Each later `scrambler lab …` on the host sends its own command line over the
//! socket and prints the answer as if it had run here. A guest that sends nothing for
//! [`SILENCE_LIMIT`] (a hung kernel: the agent cannot run), or a VM that ends before its
//! command answered (a guest kernel panic), fails the command with the end of the VM's
//! console log, which holds the guest kernel's own report (e.g. a soft lockup's trace).
//! After `lab down` the agent stops, the guest powers off, and the daemon removes the
//! socket.

use super::LAB_ROOT;
use scrambler_core::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The control socket of lab `name`'s VM.
pub fn socket(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(format!("{name}.vm.sock"))
}

/// True when a VM of lab `name` is running.
pub fn running(name: &str) -> bool {
    socket(name).exists()
}

fn log_path(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(format!("{name}.vm.log"))
}

fn pid_path(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(format!("{name}.vm.pid"))
}

/// The file lab commands lock to take turns on the VM's channel.
fn lock_path(name: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(format!("{name}.vm.lock"))
}

/// Removes what a finished lab VM left on the host (its log, pid and lock file).
pub fn forget(name: &str) {
    let _ = std::fs::remove_file(log_path(name));
    let _ = std::fs::remove_file(pid_path(name));
    let _ = std::fs::remove_file(lock_path(name));
}

/// How long the lab VM may take to boot and answer (waiting for a VM slot, while other
/// VMs run, not counted).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How often the guest agent says it is alive while its command prints nothing.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long the host waits for any line from the guest (output or heartbeat) before it
/// declares the guest hung. Many heartbeats long: a guest slowed down by a loaded host
/// (TCG) still makes it; and longer than the guest kernel's own soft-lockup panic (120 s,
/// see scrambler-vmtest), so a looping guest kernel prints its trace before the host
/// gives up on it.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(180);

/// How long a command may print nothing but heartbeats: the guest is alive but the
/// command is stuck (no lab command is quiet for this long).
pub const QUIET_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The environment variable through which [`start`] tells the daemon which process it
/// must outlive (its parent may be gone by the time the daemon looks).
const PARENT_ENV: &str = "SCRAMBLER_LAB_PARENT";

/// How many lines of the VM's console log an error about the VM carries.
const CONSOLE_TAIL_LINES: usize = 60;

/// The last `n` lines of lab `name`'s VM console log (the harness's messages and the
/// guest kernel's), or a note that there is none.
pub fn console_tail(name: &str, n: usize) -> String {
    let path = log_path(name);
    match std::fs::read_to_string(&path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "the end of the lab VM's console log ({}):\n{}",
                path.display(),
                lines[lines.len().saturating_sub(n)..].join("\n")
            )
        }
        Err(e) => format!("no console log of the lab VM ({}: {e})", path.display()),
    }
}

/// Starts the VM daemon of lab `name` and waits until its agent answers, showing the
/// boot's progress. With `stop_with_parent` the daemon powers the VM off (and removes its
/// files) as soon as this process ends, whatever ends it: a `lab run` killed mid-tour
/// leaves no VM holding the host's VM slot. On failure nothing is left: the daemon (and
/// with it qemu) is killed and its files removed; the error carries the end of its log.
pub fn start(name: &str, stop_with_parent: bool) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(LAB_ROOT).map_err(|e| Error::io("create", LAB_ROOT, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "own executable", e))?;
    let log_path = log_path(name);
    let log =
        std::fs::File::create(&log_path).map_err(|e| Error::io("create", log_path.display(), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("dup", log_path.display(), e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["lab", "vm-serve", "--name", name]);
    if stop_with_parent {
        cmd.arg("--stop-with-parent")
            .env(PARENT_ENV, std::process::id().to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe; the daemon must not die with this terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut daemon = cmd.spawn().map_err(|e| {
        forget(name);
        Error::io("start lab VM daemon", name, e)
    })?;
    let _ = std::fs::write(pid_path(name), format!("{}\n", daemon.id()));
    let failure = match wait_for_agent(name, &mut daemon) {
        Ok(()) => return Ok(()),
        Err(why) => why,
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    let tail = console_tail(name, 20);
    let _ = std::fs::remove_file(socket(name));
    forget(name);
    Err(Error::TryAgainLater(format!(
        "the lab VM {failure}; {tail}"
    )))
}

/// Waits until the agent in the VM answers; prints the boot's progress meanwhile.
/// Time spent waiting for a VM slot does not count toward [`BOOT_TIMEOUT`].
fn wait_for_agent(name: &str, daemon: &mut std::process::Child) -> std::result::Result<(), String> {
    let log = log_path(name);
    let mut boot =
        super::progress::Progress::start(format!("booting the lab VM (log: {})", log.display()));
    const POLL: Duration = Duration::from_millis(500);
    let mut booting = Duration::ZERO;
    while booting < BOOT_TIMEOUT {
        if let Ok(Some(status)) = daemon.try_wait() {
            boot.finish("failed");
            return Err(format!(
                "daemon exited ({status}) before its agent answered"
            ));
        }
        if running(name) {
            let answer = request(
                name,
                &["--version".to_string()],
                Duration::from_secs(3),
                false,
            );
            if matches!(answer, Ok(0)) {
                boot.finish("done");
                return Ok(());
            }
        }
        let stage = boot_stage(&log);
        boot.tick(&stage);
        std::thread::sleep(POLL);
        if stage != WAITING_FOR_SLOT {
            booting += POLL;
        }
    }
    boot.finish("timed out");
    Err(format!(
        "did not answer within {} s",
        BOOT_TIMEOUT.as_secs()
    ))
}

/// The stage [`boot_stage`] reports while another VM holds the host's VM slots.
const WAITING_FOR_SLOT: &str = "waiting for a VM slot";

/// The boot's latest stage from the daemon's log: the VM harness's last message (e.g.
/// "waiting for a VM slot", "booting …"), or the guest's once it prints.
fn boot_stage(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("scrambler-vmtest: ") || l.contains("| scrambler-vmtest: "))
        .unwrap_or("");
    let msg = line.rsplit("scrambler-vmtest: ").next().unwrap_or("");
    if msg.starts_with("booting ") {
        return "booting the kernel".into();
    }
    // the harness's messages name files and settings; the first clause says what it does
    msg.split(" (").next().unwrap_or("").trim().to_string()
}

/// Powers off lab `name`'s VM: `lab down` in it (which ends its agent, so the guest powers
/// off), waiting up to a minute for the VM daemon to end; a daemon still there then is
/// killed (qemu dies with it: parent-death signal). A guest that stays silent for
/// [`SILENCE_LIMIT`] meanwhile is hung: its VM is killed at once. Nothing of the VM is
/// left on the host afterwards. Returns the status of `lab down` in the guest (printed
/// here when `print`).
pub fn stop(name: &str, down_argv: &[String], print: bool) -> Result<i32> {
    let code = request(name, down_argv, SILENCE_LIMIT, print);
    let deadline = Instant::now() + Duration::from_secs(60);
    while code.is_ok() && daemon(name).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    kill(name);
    code
}

/// Kills lab `name`'s VM daemon (and with it qemu: parent-death signal) if it still runs,
/// and removes its files: for a guest that hangs or whose channel broke, where a `lab
/// down` in it cannot run. Everything of the lab lives in the guest, so nothing is left.
pub fn kill(name: &str) {
    use nix::sys::signal::{kill, Signal};
    if let Some(pid) = daemon(name) {
        let _ = kill(pid, Signal::SIGKILL);
        // qemu gets its parent-death signal; wait until the daemon is gone
        let deadline = Instant::now() + Duration::from_secs(10);
        while daemon(name).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_file(socket(name));
    forget(name);
}

/// The pid of lab `name`'s VM daemon while it runs: the pid file's, if that process is a
/// `scrambler lab vm-serve` of this lab (an ended daemon, or a recycled pid, is `None`).
fn daemon(name: &str) -> Option<nix::unistd::Pid> {
    let pid = std::fs::read_to_string(pid_path(name))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    args.contains(&format!("lab vm-serve --name {name} "))
        .then(|| nix::unistd::Pid::from_raw(pid))
}

/// Runs `scrambler <argv>` in lab `name`'s VM, printing its output here; returns its exit
/// status. Fails (with the end of the VM's console log) when the guest sends nothing for
/// [`SILENCE_LIMIT`] or the VM ends before the command answered.
pub fn forward(name: &str, argv: &[String]) -> Result<i32> {
    request(name, argv, SILENCE_LIMIT, true)
}

/// Sends `argv` to the guest agent and relays its answer; `silence` is how long the
/// channel may stay quiet (no output, no heartbeat) before the guest counts as hung.
fn request(name: &str, argv: &[String], silence: Duration, print: bool) -> Result<i32> {
    let sock = socket(name);
    let mut stream = UnixStream::connect(&sock)
        .map_err(|e| Error::io("connect to lab VM", sock.display(), e))?;
    // The VM's serial channel serves one client at a time (a second connection waits
    // unanswered): a second command waits here for the first to finish, not counted as
    // the guest's silence.
    let path = lock_path(name);
    let lock = std::fs::File::create(&path).map_err(|e| Error::io("create", path.display(), e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io("lock", path.display(), e.into()))?;
    stream
        .set_read_timeout(Some(silence))
        .map_err(|e| Error::io("configure", sock.display(), e))?;
    let id = format!(
        "{:x}",
        std::process::id() as u64 * 1_000_003 + Instant::now().elapsed().as_nanos() as u64
    );
    let line = serde_json::json!({"id": id, "argv": argv}).to_string();
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| Error::io("send to lab VM", sock.display(), e))?;
    let vm_failed = |reason: String| Error::Dataplane {
        dataplane: "lab VM".into(),
        op: format!("run {}", argv.join(" ")),
        reason: format!("{reason}; {}", console_tail(name, CONSOLE_TAIL_LINES)),
    };
    let reader = BufReader::new(stream);
    let mut last_output = Instant::now();
    for l in reader.split(b'\n') {
        let l = match l {
            Ok(l) => l,
            Err(e) if is_timeout(&e) => {
                return Err(vm_failed(format!(
                    "the guest sent nothing (no output, no heartbeat) for {} s: it hangs",
                    silence.as_secs()
                )))
            }
            Err(e) => return Err(Error::io("read from lab VM", sock.display(), e)),
        };
        let l = String::from_utf8_lossy(&l);
        match answer_line(&l, &id) {
            Some(Answer::Alive) if last_output.elapsed() > QUIET_LIMIT => {
                return Err(vm_failed(format!(
                    "the command printed nothing for {} min (the guest is alive): it is stuck",
                    QUIET_LIMIT.as_secs() / 60
                )))
            }
            Some(Answer::Out(text)) => {
                last_output = Instant::now();
                if print {
                    println!("{text}")
                }
            }
            Some(Answer::Err(text)) => {
                last_output = Instant::now();
                if print {
                    eprintln!("{text}")
                }
            }
            Some(Answer::Exit(code)) => {
                return code
                    .trim()
                    .parse()
                    .map_err(|e| Error::decode("exit status", e))
            }
            _ => {}
        }
    }
    Err(vm_failed(
        "the VM closed the channel before the command answered".into(),
    ))
}

/// True for the error a read gets when its timeout passed.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One line from the guest agent, for request `id`.
#[derive(Debug, PartialEq, Eq)]
enum Answer<'a> {
    /// A line of the command's stdout.
    Out(&'a str),
    /// A line of its stderr.
    Err(&'a str),
    /// The agent is alive; the command has printed nothing for a while.
    Alive,
    /// The command ended with this exit status (text).
    Exit(&'a str),
}

/// Parses `line` as the agent's answer to request `id`; `None` for an answer to an
/// earlier request, console noise, or an unknown kind.
fn answer_line<'a>(line: &'a str, id: &str) -> Option<Answer<'a>> {
    let line = line.trim_end_matches('\r');
    let mut parts = line.splitn(3, ' ');
    if parts.next() != Some(id) {
        return None;
    }
    let (kind, text) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match kind {
        "1" => Some(Answer::Out(text)),
        "2" => Some(Answer::Err(text)),
        "K" => Some(Answer::Alive),
        "X" => Some(Answer::Exit(text)),
        _ => None,
    }
}

/// The daemon: boots the VM with the agent and the control socket; returns when the VM
/// powers off (after `lab down`). With `stop_with_parent`, it exits (and qemu dies with it:
/// parent-death signal) once the process that started it is gone, removing the VM's files.
pub fn serve(name: &str, cni: &Path, stop_with_parent: bool) -> Result<ExitCode> {
    let sock = socket(name);
    let _ = std::fs::remove_file(&sock);
    if stop_with_parent {
        watch_parent(name);
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "own executable", e))?;
    let argv = vec![
        exe.display().to_string(),
        "lab".into(),
        "vm-agent".into(),
        "--port".into(),
        "/dev/ttyS1".into(),
    ];
    let outcome = scrambler_vmtest::VmTest::command(format!("lab {name} VM"), argv)
        .with_serial_socket(&sock)
        .with_env("SCRAMBLER_CNI", cni.display().to_string())
        .with_env(
            "SCRAMBLER_LOG",
            std::env::var("SCRAMBLER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .timeout(Duration::from_secs(24 * 3600))
        .with_env("SCRAMBLER_VPP_DIST", super::vppnode::dist_for_guest())
        .memory_mb(super::vppnode::VM_MEMORY_MB)
        .run();
    let _ = std::fs::remove_file(&sock);
    eprintln!("lab VM ended: {}", outcome.status);
    Ok(ExitCode::SUCCESS)
}

/// Exits this process once its parent is gone (it is then re-parented: its parent pid
/// changes), after removing lab `name`'s VM socket and files.
fn watch_parent(name: &str) {
    let parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse().ok())
        .map(nix::unistd::Pid::from_raw)
        .unwrap_or_else(nix::unistd::getppid);
    let name = name.to_string();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if nix::unistd::getppid() != parent {
            eprintln!("lab VM: the process that started it ({parent}) ended: powering off");
            let _ = std::fs::remove_file(socket(&name));
            forget(&name);
            std::process::exit(1);
        }
    });
}

/// The guest agent: serves requests on `port` until a `lab down` has run.
pub fn agent(port: &Path) -> Result<ExitCode> {
    let st = std::process::Command::new("stty")
        .arg("-F")
        .arg(port)
        .args(["raw", "-echo"])
        .status()
        .map_err(|e| Error::io("run stty on", port.display(), e))?;
    if !st.success() {
        return Err(Error::io(
            "configure",
            port.display(),
            std::io::Error::other("stty failed"),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)
        .map_err(|e| Error::io("open", port.display(), e))?;
    let mut out = file
        .try_clone()
        .map_err(|e| Error::io("dup", port.display(), e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "own executable", e))?;
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { continue };
        let Ok(req) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        let id = req["id"].as_str().unwrap_or("0").to_string();
        let argv: Vec<String> = req["argv"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let code = run_streaming(&exe, &argv, &id, &mut out);
        let _ = writeln!(out, "{id} X {code}");
        let _ = out.flush();
        if argv.first().map(String::as_str) == Some("lab")
            && argv.get(1).map(String::as_str) == Some("down")
        {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_streaming(exe: &Path, argv: &[String], id: &str, out: &mut std::fs::File) -> i32 {
    use std::process::Stdio;
    let child = std::process::Command::new(exe)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "{id} 2 scrambler: {e}");
            return 127;
        }
    };
    let (tx, rx) = std::sync::mpsc::channel::<(char, String)>();
    let mut readers = vec![];
    if let Some(so) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for l in BufReader::new(so).lines().map_while(|l| l.ok()) {
                let _ = tx.send(('1', l));
            }
        }));
    }
    if let Some(se) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for l in BufReader::new(se).lines().map_while(|l| l.ok()) {
                let _ = tx.send(('2', l));
            }
        }));
    }
    drop(tx);
    // the command's lines as they come, and a heartbeat whenever it stays quiet
    loop {
        match rx.recv_timeout(HEARTBEAT) {
            Ok((k, l)) => {
                let _ = writeln!(out, "{id} {k} {l}");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // a command that has exited is done, even if something it started still
                // holds its output open
                if matches!(child.try_wait(), Ok(Some(_))) {
                    readers.clear();
                    break;
                }
                let _ = writeln!(out, "{id} K");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for r in readers {
        let _ = r.join();
    }
    child.wait().ok().and_then(|s| s.code()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart_by_request_and_kind() {
        assert_eq!(
            answer_line("ab 1 hello world", "ab"),
            Some(Answer::Out("hello world"))
        );
        assert_eq!(answer_line("ab 2 oops\r", "ab"), Some(Answer::Err("oops")));
        assert_eq!(answer_line("ab K", "ab"), Some(Answer::Alive));
        assert_eq!(answer_line("ab X 0", "ab"), Some(Answer::Exit("0")));
        assert_eq!(answer_line("cd X 0", "ab"), None);
        assert_eq!(
            answer_line("[  12.3] watchdog: BUG: soft lockup", "ab"),
            None
        );
        assert_eq!(answer_line("ab Q what", "ab"), None);
    }

    /// A guest that answers nothing fails the request after the silence limit, naming the
    /// hang and carrying the VM console's end; one that only sends heartbeats does not.
    #[test]
    fn a_silent_guest_fails_the_request_with_its_console_log() {
        use std::os::unix::net::UnixListener;
        let name = format!("unit-silent-{}", std::process::id());
        std::fs::create_dir_all(LAB_ROOT).unwrap();
        let _ = std::fs::remove_file(socket(&name));
        let listener = UnixListener::bind(socket(&name)).unwrap();
        std::fs::write(
            log_path(&name),
            "vm 1.0| booted\nvm 250.1| watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [fping:4242]\n",
        )
        .unwrap();
        let guest = std::thread::spawn(move || {
            // first request: heartbeats for a while, then the exit status
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut req = String::new();
            r.read_line(&mut req).unwrap();
            let id = serde_json::from_str::<serde_json::Value>(&req).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            let mut w = s;
            for _ in 0..4 {
                writeln!(w, "{id} K").unwrap();
                std::thread::sleep(Duration::from_millis(150));
            }
            writeln!(w, "{id} X 3").unwrap();
            // second request: read, then silence until the host gives up
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut req = String::new();
            r.read_line(&mut req).unwrap();
            let mut rest = String::new();
            let _ = r.read_line(&mut rest); // returns once the host hangs up
        });
        let argv = ["lab".to_string(), "run".to_string()];
        // 4 heartbeats 150 ms apart, each within the 400 ms limit: the status comes through
        let code = request(&name, &argv, Duration::from_millis(400), false);
        assert_eq!(code.unwrap(), 3);
        let t0 = Instant::now();
        let err = request(&name, &argv, Duration::from_millis(400), false)
            .unwrap_err()
            .to_string();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(
            err.contains("sent nothing") && err.contains("it hangs"),
            "{err}"
        );
        assert!(
            err.contains("soft lockup - CPU#1 stuck for 22s! [fping:4242]"),
            "{err}"
        );
        guest.join().unwrap();
        let _ = std::fs::remove_file(socket(&name));
        forget(&name);
    }

    #[test]
    fn boot_stage_is_the_harness_s_latest_message_in_short() {
        let log = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(boot_stage(log.path()), "");
        std::fs::write(
            log.path(),
            "scrambler-vmtest: waiting for a VM slot (1 busy; SCRAMBLER_VM_JOBS raises the limit)\n",
        )
        .unwrap();
        assert_eq!(boot_stage(log.path()), WAITING_FOR_SLOT);
        let booting =
            "scrambler-vmtest: booting /t/vmlinux.elf (tcg, 3072 MiB, 2 CPUs) for tests\n";
        std::fs::write(log.path(), booting).unwrap();
        assert_eq!(boot_stage(log.path()), "booting the kernel");
        let ready = "vm   23.6| scrambler-vmtest: guest ready after 19.72 s of uptime\n";
        std::fs::write(
            log.path(),
            format!("{booting}vm 1.0| [ 0.1] Linux\n{ready}"),
        )
        .unwrap();
        assert_eq!(
            boot_stage(log.path()),
            "guest ready after 19.72 s of uptime"
        );
    }
}
