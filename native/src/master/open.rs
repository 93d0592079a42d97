//! Counting open worker connections, in all and per address, so that no one
//! address can take the master's every slot (1,100 tabs from one host once
//! kept an honest worker out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// `max` connections are open already.
    Master(usize),
    /// `max` connections from this address are open already.
    Address(usize),
}

/// The open connections, shared by the connection tasks.
#[derive(Clone, Debug, Default)]
pub struct Openings(Arc<Mutex<Counts>>);

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Openings {
    /// Counts one more connection from `addr`, unless that would pass `max`
    /// in all or `per_address` from `addr`.
    pub fn open(&self, addr: IpAddr, max: usize, per_address: usize) -> Result<Opened, Full> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= max {
            return Err(Full::Master(max));
        }
        let here = counts.by_address.entry(addr).or_default();
        if *here >= per_address {
            return Err(Full::Address(per_address));
        }
        *here += 1;
        counts.total += 1;
        Ok(Opened { openings: self.clone(), addr })
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct Opened {
    openings: Openings,
    addr: IpAddr,
}

impl Drop for Opened {
    fn drop(&mut self) {
        let mut counts = self.openings.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(here) = counts.by_address.get_mut(&self.addr) {
            *here -= 1;
            if *here == 0 {
                counts.by_address.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_address_and_frees_on_drop() {
        let openings = Openings::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = openings.open(a, 3, 2).unwrap();
        let _second = openings.open(a, 3, 2).unwrap();
        assert_eq!(openings.open(a, 3, 2).unwrap_err(), Full::Address(2));
        let _third = openings.open(b, 3, 2).unwrap();
        assert_eq!(openings.open(b, 3, 2).unwrap_err(), Full::Master(3));
        drop(first);
        assert!(openings.open(a, 3, 2).is_ok(), "a closed connection frees its place");
    }
}
