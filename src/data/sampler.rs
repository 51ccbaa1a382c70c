//! The calibration sampler of the reference code (`lib/data.py:get_c4`): CPython's
//! `random.seed(seed)` (MT19937 seeded by `init_by_array`) and `random.randint` (rejection
//! sampling over `getrandbits`), reproduced exactly so that the same seed picks the same
//! documents and offsets as Python does.

const N: usize = 624;
const M: usize = 397;

pub struct PyRandom {
    mt: [u32; N],
    i: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        // CPython splits abs(seed) into 32-bit words, least significant first; 0 → [0].
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut r = Self { mt: [0; N], i: N };
        r.init_genrand(19_650_218);
        let mut i = 1;
        let mut j = 0;
        for _ in 0..N.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.i = N;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.i >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mut v = self.mt[(k + M) % N] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[k] = v;
            }
            self.i = 0;
        }
        let mut y = self.mt[self.i];
        self.i += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random.getrandbits(k)` for 1 ≤ k ≤ 32.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `random.randint(a, b)`, both ends included (b − a < 2³²).
    pub fn randint(&mut self, a: u64, b: u64) -> u64 {
        let n = b - a + 1;
        let k = 64 - n.leading_zeros();
        assert!((1..=32).contains(&k), "randint range too large");
        loop {
            let r = self.getrandbits(k) as u64;
            if r < n {
                return a + r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cpython() {
        // python3 -c "import random; random.seed(0); print([random.randint(0, 356316) for _ in range(5)])"
        let mut r = PyRandom::new(0);
        let got: Vec<u64> = (0..5).map(|_| r.randint(0, 356_316)).collect();
        assert_eq!(got, [201979, 220500, 21225, 135746, 268055]);
        let mut r = PyRandom::new(0);
        let got: Vec<u64> = (0..5).map(|_| r.randint(0, 9)).collect();
        assert_eq!(got, [6, 6, 0, 4, 8]);
        assert_eq!(r.getrandbits(32), 2_087_043_557);
        let mut r = PyRandom::new(12345);
        let got: Vec<u64> = (0..3).map(|_| r.randint(0, 1_000_000)).collect();
        assert_eq!(got, [436857, 768276, 10663]);
    }
}
