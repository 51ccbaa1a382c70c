//! The README's Slurm scripts on a real single-node Slurm: MUNGE, slurmctld and slurmd are
//! started on localhost from a minimal configuration in a temp dir (no cgroups:
//! `proctrack/linuxproc`, `task/none`), `deploy/slurm/sweep.sbatch` is submitted as a real 3-task
//! array job with the tiny grid of the other sweep tests as its arguments, and
//! `deploy/slurm/merge.sbatch` after it (`--dependency=afterok`, as the README submits them). The
//! merged file must hold the rows of the unsharded sweep, as in tests/sweep_auto.rs. The daemons
//! this test started are stopped when it ends, also when it fails.
//!
//! Without the Slurm and MUNGE programs the test says in one line that it skipped and passes,
//! unless `DLPX_REQUIRE_SLURM=1` (`.ci/run` installs them and sets it).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::study::{measured, rows, Study, GRID};
use common::{ok, Tiny};

/// The programs the test runs: the daemons and the client commands.
const PROGRAMS: [&str; 7] = [
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "sinfo",
    "scontrol",
];

/// How long the daemons may take to come up, and the two jobs to finish (they take seconds).
const START: Duration = Duration::from_secs(30);
const JOBS: Duration = Duration::from_secs(90);

/// A program on PATH or in the sbin folders, where Debian puts the daemons.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether the Slurm programs are here, or why the test cannot run.
fn programs() -> Result<(), String> {
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "{} not found (apt-get install slurmctld slurmd slurm-client munge)",
            missing.join(", ")
        )),
    }
}

/// A port nothing listens on now (the daemons bind it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The short host name: slurmctld only runs where `SlurmctldHost` names the machine, and slurmd
/// finds its node by it.
fn host() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    h.trim().split('.').next().unwrap().to_string()
}

fn user() -> String {
    let o = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A one-node cluster: the node has this machine's CPUs and a little memory (the jobs ask for
/// less), authentication through the test's own munged socket, and every file under `dir`.
fn slurm_conf(dir: &Path, socket: &Path, ports: (u16, u16)) -> String {
    let (host, user, d) = (host(), user(), dir.display());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "ClusterName=dlpxtest\n\
         SlurmctldHost={host}(127.0.0.1)\n\
         SlurmctldPort={}\n\
         SlurmdPort={}\n\
         AuthType=auth/munge\n\
         AuthInfo=socket={}\n\
         CredType=cred/munge\n\
         SlurmUser={user}\n\
         SlurmdUser={user}\n\
         StateSaveLocation={d}/state\n\
         SlurmdSpoolDir={d}/spool\n\
         SlurmctldPidFile={d}/slurmctld.pid\n\
         SlurmdPidFile={d}/slurmd.pid\n\
         SlurmctldLogFile={d}/slurmctld.log\n\
         SlurmdLogFile={d}/slurmd.log\n\
         ProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         JobCompType=jobcomp/none\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_CPU\n\
         SchedulerType=sched/builtin\n\
         MpiDefault=none\n\
         MailProg=/bin/true\n\
         ReturnToService=2\n\
         KillWait=2\n\
         NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=500 State=UNKNOWN\n\
         PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
        ports.0,
        ports.1,
        socket.display(),
    )
}

/// The daemons this test started, stopped when it is dropped (also when the test panics):
/// the jobs are cancelled, then each daemon gets SIGTERM and, after a few seconds, SIGKILL.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    /// munged, slurmctld and slurmd in the foreground, as children of the test.
    fn start(dir: PathBuf) -> Cluster {
        let munge = dir.join("munge");
        std::fs::create_dir_all(&munge).unwrap();
        for d in ["state", "spool"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let key = munge.join("munge.key");
        write_key(&key);
        let socket = munge.join("munge.socket");
        let conf = dir.join("slurm.conf");
        std::fs::write(&conf, slurm_conf(&dir, &socket, (free_port(), free_port()))).unwrap();
        let mut c = Cluster {
            dir,
            conf,
            daemons: vec![],
        };
        let m = munge.display();
        c.spawn(
            "munged",
            &[
                "--foreground",
                "--force",
                &format!("--socket={}", socket.display()),
                &format!("--key-file={}", key.display()),
                &format!("--log-file={m}/munged.log"),
                &format!("--pid-file={m}/munged.pid"),
                &format!("--seed-file={m}/munged.seed"),
            ],
        );
        c.wait_for("munged's socket", |_| socket.exists());
        let conf = c.conf.to_str().unwrap().to_string();
        c.spawn("slurmctld", &["-D", "-f", &conf]);
        c.spawn("slurmd", &["-D", "-f", &conf]);
        c.wait_for("the node", |c| {
            let o = c.cmd("sinfo").args(["-h", "-o", "%T"]).output();
            o.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        c
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.out"))).unwrap();
        let child = Command::new(find(name).unwrap())
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self.daemons.push((name, child));
    }

    /// A Slurm client command against this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(find(program).unwrap());
        c.env("SLURM_CONF", &self.conf).current_dir(&self.dir);
        c
    }

    fn out(&self, program: &str, args: &[&str]) -> String {
        let o = self.cmd(program).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{program} {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Polls `ready` every 200 ms; fails with the daemons' logs when one of them has exited or
    /// after `START`.
    fn wait_for(&mut self, what: &str, ready: impl Fn(&Cluster) -> bool) {
        let t = Instant::now();
        while !ready(self) {
            let exited: Vec<String> = self
                .daemons
                .iter_mut()
                .filter_map(|(name, child)| {
                    let status = child.try_wait().ok()??;
                    Some(format!("{name} exited ({status})"))
                })
                .collect();
            assert!(exited.is_empty(), "{exited:?}\n{}", self.logs());
            assert!(
                t.elapsed() < START,
                "{what} not ready after {START:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every log and daemon output in the folder (the last 40 lines of each), for a failure.
    fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .chain(std::fs::read_dir(self.dir.join("munge")).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("log" | "out")))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("==> {} <==\n{tail}\n", p.display())
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if find("scancel").is_some() {
            let _ = self.cmd("scancel").arg("--user").arg(user()).output();
        }
        // In reverse: slurmd, slurmctld, then munged, which the other two talk to.
        for (_, child) in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .output();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A MUNGE key: 1024 random bytes that only the owner reads (munged refuses any other mode).
fn write_key(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = vec![0u8; 1024];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut bytes,
    )
    .unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Until none of `jobs` is queued or running any more.
fn wait_jobs(cluster: &mut Cluster, jobs: &str) {
    let t = Instant::now();
    loop {
        let queued = cluster.out("squeue", &["-h", "-j", jobs, "-o", "%i %T"]);
        if queued.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < JOBS,
            "jobs still queued after {JOBS:?}: {queued}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_sbatch_scripts_run_a_sharded_sweep_on_a_real_slurm() {
    if let Err(why) = programs() {
        let required = std::env::var("DLPX_REQUIRE_SLURM").is_ok_and(|v| v == "1");
        assert!(!required, "DLPX_REQUIRE_SLURM=1 but {why}");
        // Straight to the terminal: the test harness keeps println! of a passing test.
        let _ = writeln!(std::io::stderr(), "tests/slurm.rs skipped: {why}");
        return;
    }
    let started = Instant::now();
    let study = Study::new(Tiny::default(), 5);
    let d = study.d();
    let mut cluster = Cluster::start(d.join("slurm"));
    let up = started.elapsed();

    // The unsharded sweep, the reference.
    let whole = d.join("whole");
    let mut a: Vec<String> = study.grid();
    a.extend(["--out".into(), whole.display().to_string()]);
    ok(&study.dlpx(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let all = rows(&d.join("whole.jsonl"));
    assert_eq!(all.len(), 12);

    // The README's submission, with the tiny grid as the sweep script's arguments and the
    // resources of this one-node cluster on the command line (they override #SBATCH lines).
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_dlpx")).parent().unwrap();
    let out = d.join("sweeps");
    let path = std::env::join_paths(std::iter::once(bin.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let submit = |script: &str, extra: &[&str], args: &[String]| -> String {
        let o = cluster
            .cmd("sbatch")
            .args(["--parsable", "--cpus-per-task=1", "--mem=100"])
            .args(extra)
            .arg(repo.join(script))
            .args(args)
            .env("PATH", &path)
            .env("SHARED", d)
            .env("OUT", &out)
            .env("DLPX_CACHE", d.join("cache"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "sbatch {script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let id = String::from_utf8_lossy(&o.stdout);
        id.trim().split(';').next().unwrap().to_string()
    };
    // `dlpx sweep`'s arguments but for the sweep itself, --shard and --out (the script's own).
    let grid: Vec<String> = study.grid()[1..].to_vec();
    assert!(grid.ends_with(&GRID.map(String::from)));
    let array = submit("deploy/slurm/sweep.sbatch", &[], &grid);
    let merge = submit(
        "deploy/slurm/merge.sbatch",
        &[&format!("--dependency=afterok:{array}")],
        &[],
    );
    let submitted = Instant::now();
    wait_jobs(&mut cluster, &format!("{array},{merge}"));
    let ran = submitted.elapsed();

    // Every task and the merge completed; each task ran the shard of its array index.
    let states = cluster.out("scontrol", &["-o", "show", "job", &array]);
    let states = format!(
        "{states}\n{}",
        cluster.out("scontrol", &["-o", "show", "job", &merge])
    );
    assert_eq!(
        states.matches("JobState=COMPLETED").count(),
        4,
        "{states}\n{}",
        cluster.logs()
    );
    for t in 0..3 {
        let log = std::fs::read_to_string(d.join(format!("slurm/dlpx-sweep-{array}_{t}.log")))
            .unwrap_or_else(|e| panic!("task {t}'s log: {e}\n{}", cluster.logs()));
        let want = format!(
            "--shard auto: shard {t}/3 from the Slurm array job {array} (SLURM_ARRAY_TASK_ID={t})"
        );
        assert!(log.contains(&want), "{want}\n{log}");
        assert!(out.join(format!("dlpx-sweep.{t}of3.jsonl")).is_file());
    }
    let merged = rows(&d.join("sweeps.merged.jsonl"));
    assert_eq!(
        measured(&merged),
        measured(&all),
        "the array's shards, merged by merge.sbatch = the unsharded sweep"
    );
    drop(cluster);
    let _ = writeln!(
        std::io::stderr(),
        "tests/slurm.rs: a one-node Slurm up in {:.1} s, the 3-task array and its merge ran in \
         {:.1} s, {:.1} s in all",
        up.as_secs_f64(),
        ran.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
