//! CPU affinity sets, to tell whether two polling threads may share a CPU.

/// A thread's CPU affinity.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl std::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| self.has(c))
            .collect();
        f.debug_tuple("CpuSet").field(&cpus).finish()
    }
}

impl CpuSet {
    /// The calling thread's affinity (`None` when it cannot be read).
    pub fn of_this_thread() -> Option<Self> {
        // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is a valid out-parameter of the size passed.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        (rc == 0).then_some(Self(set))
    }

    fn has(&self, cpu: usize) -> bool {
        // SAFETY: callers pass cpu below CPU_SETSIZE, the size of the set.
        cpu < libc::CPU_SETSIZE as usize && unsafe { libc::CPU_ISSET(cpu, &self.0) }
    }

    /// Whether the two sets have a CPU in common.
    pub fn meets(&self, other: &CpuSet) -> bool {
        (0..libc::CPU_SETSIZE as usize).any(|cpu| self.has(cpu) && other.has(cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::CpuSet;

    #[test]
    fn this_thread_meets_itself() {
        let s = CpuSet::of_this_thread().expect("affinity readable");
        assert!(s.meets(&s));
        assert!(format!("{s:?}").starts_with("CpuSet(["));
    }
}
