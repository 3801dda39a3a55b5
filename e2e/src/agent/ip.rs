//! Pod IPs: each pod gets its own loopback address 127.0.0.N (on Linux all of 127.0.0.0/8
//! is local), so pods can all bind the same port, as they would on a real network.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::Ipv4Addr,
    path::PathBuf,
};

/// The lowest and highest host byte handed out (127.0.0.1 is left to the API server and tools).
const FIRST: u8 = 2;
const LAST: u8 = 254;

/// Which of 127.0.0.2–254 are in use: pure bookkeeping, the lowest free address first.
#[derive(Debug, Default, Clone)]
pub struct AddressPool {
    used: BTreeSet<u8>,
}

impl AddressPool {
    /// Takes the lowest free address that `claim` accepts (it may refuse one held elsewhere).
    pub fn allocate(&mut self, mut claim: impl FnMut(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        let host = (FIRST..=LAST).find(|n| !self.used.contains(n) && claim(Ipv4Addr::new(127, 0, 0, *n)))?;
        self.used.insert(host);
        Some(Ipv4Addr::new(127, 0, 0, host))
    }

    /// Returns an address to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        let [_, _, _, host] = ip.octets();
        self.used.remove(&host);
    }

    /// How many addresses are taken.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none is taken.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// The pool plus an exclusive file lock per address in a directory shared by all agents on
/// the machine, so two agents (two test binaries, two developers' runs) never hand out the
/// same address; the OS drops the locks when an agent dies.
#[derive(Debug)]
pub struct LoopbackAddresses {
    pool: AddressPool,
    lock_dir: PathBuf,
    locks: BTreeMap<Ipv4Addr, File>,
}

impl LoopbackAddresses {
    /// Addresses locked under `lock_dir` (created if missing).
    pub fn new(lock_dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&lock_dir)?;
        Ok(Self { pool: AddressPool::default(), lock_dir, locks: BTreeMap::new() })
    }

    /// The lowest address free here and not locked by another agent.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let lock_dir = &self.lock_dir;
        let mut taken = None;
        let ip = self.pool.allocate(|ip| {
            let Ok(file) = File::options().create(true).truncate(false).write(true).open(lock_dir.join(ip.to_string()))
            else {
                return false;
            };
            let locked = file.try_lock().is_ok();
            if locked {
                taken = Some(file);
            }
            locked
        })?;
        if let Some(file) = taken {
            self.locks.insert(ip, file);
        }
        Some(ip)
    }

    /// Frees an address for this agent and the others.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.pool.release(ip);
        self.locks.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_the_lowest_free_address_and_reuses_released_ones() {
        let mut pool = AddressPool::default();
        let a = pool.allocate(|_| true).unwrap();
        let b = pool.allocate(|_| true).unwrap();
        let c = pool.allocate(|_| true).unwrap();
        assert_eq!([a, b, c].map(|ip| ip.to_string()), ["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
        pool.release(b);
        assert_eq!(pool.allocate(|_| true), Some(b));
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn skips_addresses_the_claim_refuses_and_runs_out() {
        let mut pool = AddressPool::default();
        assert_eq!(pool.allocate(|ip| ip.octets()[3] > 3), Some(Ipv4Addr::new(127, 0, 0, 4)));
        let mut given = 1;
        while pool.allocate(|_| true).is_some() {
            given += 1;
        }
        assert_eq!(given, 253, "127.0.0.2 and .3 were refused once but are still free");
        assert_eq!(pool.allocate(|_| true), None);
    }

    #[test]
    fn two_agents_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut one = LoopbackAddresses::new(dir.path().to_path_buf()).unwrap();
        let mut two = LoopbackAddresses::new(dir.path().to_path_buf()).unwrap();
        let a = one.allocate().unwrap();
        let b = two.allocate().unwrap();
        assert_ne!(a, b);
        one.release(a);
        assert_eq!(two.allocate(), Some(a));
    }
}
