//! The proxy core's time, the same source for every target: `/proc/stat`
//! per CPU (it counts softirq work done on the core, which a process's own
//! `/proc/<pid>/stat` misses), and the share of it that other processes
//! took (interference).
//!
//! Times are in USER_HZ ticks (100 per second on every Linux architecture
//! we run on) and tick-sampled: over a 5–10 s window the error is well
//! under 1 %.

use std::collections::HashMap;

/// Ticks per second in `/proc/stat` and `/proc/<pid>/stat`.
const USER_HZ: f64 = 100.0;

/// CPU numbers of a taskset-style list (`1`, `1,3`, `0-2`).
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// One CPU set's times so far, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CoreTimes {
    /// user + nice + system + irq + softirq: work done on the cores.
    pub busy_s: f64,
    /// Time the hypervisor gave to someone else.
    pub steal_s: f64,
}

impl CoreTimes {
    /// The sum over `cpus` in a `/proc/stat` text; `None` if one is absent.
    pub fn parse(stat: &str, cpus: &[usize]) -> Option<Self> {
        let mut t = Self::default();
        for cpu in cpus {
            let name = format!("cpu{cpu}");
            let line = stat
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            // user nice system idle iowait irq softirq steal (guest time is
            // already inside user and nice).
            let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
            t.busy_s += (at(0) + at(1) + at(2) + at(5) + at(6)) / USER_HZ;
            t.steal_s += at(7) / USER_HZ;
        }
        Some(t)
    }

    /// Read `/proc/stat` now.
    pub fn read(cpus: &[usize]) -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?, cpus)
    }
}

/// Ticks of CPU time (utime + stime) of every user-space thread except
/// `skip_pid`'s, with the CPU each last ran on, keyed by thread id.
/// Kernel threads are left out: on the proxy core they do the core's own
/// kernel work (softirq, timers), which is part of the proxy's cost.
pub fn user_threads(skip_pid: u32) -> HashMap<u32, (u64, usize)> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == skip_pid {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue; // the process ended meanwhile
        };
        for t in tasks.flatten() {
            let tid = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
            let stat = std::fs::read_to_string(t.path().join("stat"));
            if let (Some(tid), Ok(stat)) = (tid, stat)
                && let Some(th) = ThreadStat::parse(&stat)
                && !th.kernel
            {
                out.insert(tid, (th.ticks, th.cpu));
            }
        }
    }
    out
}

/// What one `/proc/.../task/<tid>/stat` line says about the thread.
#[derive(Debug, PartialEq)]
struct ThreadStat {
    /// utime + stime, in ticks.
    ticks: u64,
    /// The CPU it last ran on.
    cpu: usize,
    /// A kernel thread (PF_KTHREAD).
    kernel: bool,
}

impl ThreadStat {
    fn parse(stat: &str) -> Option<Self> {
        const PF_KTHREAD: u64 = 0x0020_0000;
        // The command name may hold spaces; fields start after the last
        // ')' at field 3 (state), so field n is at index n - 3.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            ticks: num(14)? + num(15)?,
            cpu: usize::try_from(num(39)?).ok()?,
            kernel: num(9)? & PF_KTHREAD != 0,
        })
    }
}

/// A sample of the proxy core at a window boundary.
#[derive(Debug, Clone)]
pub struct CoreMark {
    pub core: CoreTimes,
    /// Other user-space threads: ticks and last CPU.
    pub others: HashMap<u32, (u64, usize)>,
}

impl CoreMark {
    pub fn read(proxy_pid: u32, cpus: &[usize]) -> Option<Self> {
        Some(Self {
            core: CoreTimes::read(cpus)?,
            others: user_threads(proxy_pid),
        })
    }

    /// Seconds other threads that were last seen on `cpus` ran since
    /// `earlier` (a thread that moved counts where it ended up).
    fn others_since(&self, earlier: &Self, cpus: &[usize]) -> f64 {
        let ticks: u64 = self
            .others
            .iter()
            .filter(|(_, (_, cpu))| cpus.contains(cpu))
            .map(|(tid, (t, _))| t.saturating_sub(earlier.others.get(tid).map_or(0, |e| e.0)))
            .sum();
        ticks as f64 / USER_HZ
    }
}

/// What the core did in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreWindow {
    /// Seconds the core was busy (every task, softirq included).
    pub busy_s: f64,
    /// Share of the window other user-space processes (and the
    /// hypervisor, as steal) took from the core.
    pub other_share: f64,
}

impl CoreWindow {
    /// Between two marks `secs` apart.
    pub fn between(a: &CoreMark, b: &CoreMark, cpus: &[usize], secs: f64) -> Self {
        let busy = b.core.busy_s - a.core.busy_s;
        let steal = (b.core.steal_s - a.core.steal_s).max(0.0);
        let other = b.others_since(a, cpus) + steal;
        Self {
            busy_s: busy.max(0.0),
            other_share: if secs > 0.0 { other / secs } else { 0.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  500 0 300 9000 10 0 40 5 0 0\n\
        cpu0 200 0 100 4500 5 0 10 2 0 0\n\
        cpu1 300 7 200 4500 5 3 30 3 0 0\n\
        intr 1 2 3\n";

    #[test]
    fn core_times_sum_busy_fields_of_the_listed_cpus() {
        let t = CoreTimes::parse(STAT, &[1]).expect("cpu1 present");
        // user 300 + nice 7 + system 200 + irq 3 + softirq 30 ticks.
        assert!((t.busy_s - 5.40).abs() < 1e-9, "{t:?}");
        assert!((t.steal_s - 0.03).abs() < 1e-9, "{t:?}");
        let both = CoreTimes::parse(STAT, &[0, 1]).expect("both present");
        assert!((both.busy_s - (5.40 + 3.10)).abs() < 1e-9, "{both:?}");
        assert_eq!(CoreTimes::parse(STAT, &[2]), None, "cpu2 is absent");
        // "cpu" (the total line) must not be taken for cpu1.
        assert_eq!(CoreTimes::parse("cpu  1 2 3 4\n", &[1]), None);
    }

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("1,3"), Some(vec![1, 3]));
        assert_eq!(parse_cpu_list("0-2"), Some(vec![0, 1, 2]));
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn thread_stat_gives_time_cpu_and_kind_even_with_spaces_in_the_name() {
        // Fields 4..=52 after "pid (comm) state".
        let mut fields: Vec<String> = (4..=52).map(|i| i.to_string()).collect();
        fields[9 - 4] = "6291456".into(); // flags: PF_KTHREAD | PF_RANDOMIZE
        fields[14 - 4] = "250".into(); // utime
        fields[15 - 4] = "50".into(); // stime
        fields[39 - 4] = "1".into(); // processor
        let line = format!("4242 (lcore (x) 1) R {}", fields.join(" "));
        let t = ThreadStat::parse(&line).expect("parses");
        assert_eq!((t.ticks, t.cpu, t.kernel), (300, 1, true));
        fields[9 - 4] = "4194304".into(); // PF_RANDOMIZE only
        let line = format!("4242 (bench) S {}", fields.join(" "));
        assert!(!ThreadStat::parse(&line).expect("parses").kernel);
        assert_eq!(ThreadStat::parse("4242 (x) R 1 2"), None);
    }

    fn mark(busy_s: f64, steal_s: f64, others: &[(u32, u64, usize)]) -> CoreMark {
        CoreMark {
            core: CoreTimes { busy_s, steal_s },
            others: others
                .iter()
                .map(|&(tid, t, cpu)| (tid, (t, cpu)))
                .collect(),
        }
    }

    #[test]
    fn other_processes_are_the_threads_seen_on_the_core() {
        let a = mark(100.0, 1.0, &[(7, 1000, 0), (8, 50, 1)]);
        // 10 s: thread 8 ran 40 ticks on core 1, thread 7 60 on core 0,
        // thread 9 began on core 1 and ran 5; 0.1 s stolen.
        let b = mark(109.5, 1.1, &[(7, 1060, 0), (8, 90, 1), (9, 5, 1)]);
        let w = CoreWindow::between(&a, &b, &[1], 10.0);
        assert!((w.busy_s - 9.5).abs() < 1e-9, "{w:?}");
        assert!((w.other_share - (0.45 + 0.1) / 10.0).abs() < 1e-9, "{w:?}");
        let w0 = CoreWindow::between(&a, &b, &[0], 10.0);
        assert!(
            (w0.other_share - (0.60 + 0.1) / 10.0).abs() < 1e-9,
            "{w0:?}"
        );
    }

    #[test]
    fn this_spinning_thread_is_seen_and_the_skipped_process_is_not() {
        // Spin 100 ms: about ten ticks.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let link = std::fs::read_link("/proc/thread-self").expect("procfs");
        let tid: u32 = link
            .file_name()
            .and_then(|n| n.to_str()?.parse().ok())
            .expect("…/task/<tid>");
        let (ticks, _) = user_threads(0)[&tid];
        assert!(ticks > 0, "{ticks}");
        assert!(!user_threads(std::process::id()).contains_key(&tid));
    }
}
