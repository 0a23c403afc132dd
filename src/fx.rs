//! A small multiplicative hasher for the hot maps of in-process keys (no DoS concern: the keys are berth's own ids
//! and the cluster's names, and a slow hash of every pod's strings on every pass costs more than it protects).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The hasher (FxHash's multiply and rotate, eight bytes a step).
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Eight bytes a step: label and namespace strings are hashed for every pod of a large cluster.
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.write_u64(u64::from_le_bytes(word));
        }
        for b in words.remainder() {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(FX_K);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(FX_K);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(FX_K);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// A HashMap with the Fx hasher.
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// splitmix64: advances `state` and returns its next well-mixed value. berth's one seeded generator (the
/// simulation's choices, the emulator's and the simulated cloud's faults): the same seed gives the same sequence on
/// every machine.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
