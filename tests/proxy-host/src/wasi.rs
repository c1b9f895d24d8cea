//! The slice of WASI preview 1 that a Rust `wasm32-wasip1` module uses, written against
//! the virtual clock: clocks read the process's virtual time, `random_get` is a seeded
//! generator (deterministic per VM), stdout/stderr are captured as log lines the way
//! Envoy turns them into info/error logs, and the environment is the VM's
//! `environment_variables`. The wasm32 test runner uses the same code with real time,
//! real entropy and inherited output.

use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker, Memory};

use crate::shared::Shared;

const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;
const ESPIPE: i32 = 70;

/// Which clock WASI reads.
#[derive(Clone)]
pub enum WasiClock {
    /// The simulated process's virtual clock.
    Virtual(Shared),
    /// The machine's clocks (the wasm32 test runner).
    Real(Instant),
}

/// Where stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasiOutput {
    /// Captured: stdout becomes an info log line, stderr an error line (Envoy's mapping).
    Capture,
    /// Written to this process's stdout/stderr.
    Inherit,
}

/// `proc_exit` unwinds the guest with this error; the runner reads the code from it.
#[derive(Debug, thiserror::Error)]
#[error("guest called proc_exit({0})")]
pub struct ProcExit(pub i32);

/// WASI settings and state of one instance.
pub struct WasiState {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub clock: WasiClock,
    pub output: WasiOutput,
    /// xorshift-style state for `random_get`; `None` draws from the OS instead.
    pub rng: Option<u64>,
    /// Lines written to stdout/stderr when captured: (fd, text).
    pub captured: Vec<(u32, String)>,
    /// Partial lines written to stdout (1) and stderr (2) when captured.
    pub pending: [Vec<u8>; 3],
}

impl WasiState {
    pub fn virtual_clock(shared: Shared, env: Vec<(String, String)>, seed: u64) -> Self {
        WasiState {
            args: Vec::new(),
            env,
            clock: WasiClock::Virtual(shared),
            output: WasiOutput::Capture,
            rng: Some(seed | 1),
            captured: Vec::new(),
            pending: Default::default(),
        }
    }

    pub fn real(args: Vec<String>, env: Vec<(String, String)>) -> Self {
        WasiState {
            args,
            env,
            clock: WasiClock::Real(Instant::now()),
            output: WasiOutput::Inherit,
            rng: None,
            captured: Vec::new(),
            pending: Default::default(),
        }
    }

    fn realtime_ns(&self) -> u64 {
        match &self.clock {
            WasiClock::Virtual(s) => s.now_unix_nanos(),
            WasiClock::Real(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        }
    }

    fn monotonic_ns(&self) -> u64 {
        match &self.clock {
            WasiClock::Virtual(s) => s.monotonic_nanos(),
            WasiClock::Real(start) => start.elapsed().as_nanos() as u64,
        }
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        match &mut self.rng {
            Some(state) => splitmix_fill(state, buf),
            None => {
                let mut state = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x1234)
                    ^ (buf.as_ptr() as u64).rotate_left(32);
                splitmix_fill(&mut state, buf);
            }
        }
    }
}

/// splitmix64: deterministic for a seed, good enough to exercise the guest.
fn splitmix_fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let n = chunk.len();
        chunk.copy_from_slice(&z.to_le_bytes()[..n]);
    }
}

/// A store's data type that carries WASI state and, optionally, a captured-output sink.
pub trait WasiView: 'static {
    fn wasi(&mut self) -> &mut WasiState;
    /// Called with each complete write to a captured stdout (1) or stderr (2).
    fn captured_output(&mut self, fd: u32, text: String) {
        self.wasi().captured.push((fd, text));
    }
}

fn memory<T>(caller: &mut Caller<'_, T>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn read<T>(caller: &mut Caller<'_, T>, ptr: i32, len: usize) -> Option<Vec<u8>> {
    let m = memory(caller)?;
    let start = ptr as u32 as usize;
    m.data(&*caller)
        .get(start..start.checked_add(len)?)
        .map(|s| s.to_vec())
}

fn write<T>(caller: &mut Caller<'_, T>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(m) = memory(caller) else {
        return false;
    };
    let start = ptr as u32 as usize;
    let Some(end) = start.checked_add(bytes.len()) else {
        return false;
    };
    match m.data_mut(&mut *caller).get_mut(start..end) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn write_u32<T>(caller: &mut Caller<'_, T>, ptr: i32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

/// Writes NUL-terminated strings and a pointer table, as args_get/environ_get expect.
fn write_string_table<T>(
    caller: &mut Caller<'_, T>,
    items: &[String],
    table: i32,
    buf: i32,
) -> i32 {
    let mut at = buf as u32;
    for (i, s) in items.iter().enumerate() {
        if !write_u32(caller, table.wrapping_add((i * 4) as i32), at) {
            return EFAULT;
        }
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        if !write(caller, at as i32, &bytes) {
            return EFAULT;
        }
        at = at.wrapping_add(bytes.len() as u32);
    }
    ESUCCESS
}

fn sizes<T>(caller: &mut Caller<'_, T>, items: &[String], count_ptr: i32, size_ptr: i32) -> i32 {
    let total: usize = items.iter().map(|s| s.len() + 1).sum();
    if !write_u32(caller, count_ptr, items.len() as u32)
        || !write_u32(caller, size_ptr, total as u32)
    {
        return EFAULT;
    }
    ESUCCESS
}

fn env_strings(w: &WasiState) -> Vec<String> {
    w.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Adds the WASI preview 1 functions to a linker.
pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    const M: &str = "wasi_snapshot_preview1";
    linker.func_wrap(
        M,
        "args_sizes_get",
        |mut c: Caller<'_, T>, argc: i32, size: i32| -> i32 {
            let args = c.data_mut().wasi().args.clone();
            sizes(&mut c, &args, argc, size)
        },
    )?;
    linker.func_wrap(
        M,
        "args_get",
        |mut c: Caller<'_, T>, argv: i32, buf: i32| -> i32 {
            let args = c.data_mut().wasi().args.clone();
            write_string_table(&mut c, &args, argv, buf)
        },
    )?;
    linker.func_wrap(
        M,
        "environ_sizes_get",
        |mut c: Caller<'_, T>, n: i32, size: i32| -> i32 {
            let env = env_strings(c.data_mut().wasi());
            sizes(&mut c, &env, n, size)
        },
    )?;
    linker.func_wrap(
        M,
        "environ_get",
        |mut c: Caller<'_, T>, table: i32, buf: i32| -> i32 {
            let env = env_strings(c.data_mut().wasi());
            write_string_table(&mut c, &env, table, buf)
        },
    )?;
    linker.func_wrap(
        M,
        "clock_res_get",
        |mut c: Caller<'_, T>, id: i32, out: i32| -> i32 {
            if !(0..=1).contains(&id) {
                return ENOTSUP;
            }
            if write(&mut c, out, &1u64.to_le_bytes()) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        M,
        "clock_time_get",
        |mut c: Caller<'_, T>, id: i32, _precision: i64, out: i32| -> i32 {
            let now = match id {
                0 => c.data_mut().wasi().realtime_ns(),
                1 => c.data_mut().wasi().monotonic_ns(),
                _ => return ENOTSUP,
            };
            if write(&mut c, out, &now.to_le_bytes()) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        M,
        "fd_write",
        |mut c: Caller<'_, T>, fd: i32, iovs: i32, n: i32, written_ptr: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return EBADF;
            }
            let mut data = Vec::new();
            for i in 0..(n.max(0) as usize) {
                let Some(iov) = read(&mut c, iovs.wrapping_add((i * 8) as i32), 8) else {
                    return EFAULT;
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
                if len == 0 {
                    continue;
                }
                let Some(bytes) = read(&mut c, ptr, len) else {
                    return EFAULT;
                };
                data.extend_from_slice(&bytes);
            }
            let total = data.len() as u32;
            match c.data_mut().wasi().output {
                WasiOutput::Inherit => {
                    let _ = if fd == 1 {
                        std::io::stdout().write_all(&data)
                    } else {
                        std::io::stderr().write_all(&data)
                    };
                }
                WasiOutput::Capture => {
                    // Line-buffered, so a println! that the guest's std splits into
                    // several writes still reads as one line. (Envoy logs each write.)
                    let pending = &mut c.data_mut().wasi().pending[fd as usize];
                    pending.extend_from_slice(&data);
                    let mut lines = Vec::new();
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
                    }
                    for line in lines {
                        c.data_mut().captured_output(fd as u32, line);
                    }
                }
            }
            if write_u32(&mut c, written_ptr, total) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        M,
        "fd_read",
        |mut c: Caller<'_, T>, fd: i32, _iovs: i32, _n: i32, read_ptr: i32| -> i32 {
            if fd != 0 {
                return EBADF;
            }
            // stdin is empty.
            if write_u32(&mut c, read_ptr, 0) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(M, "fd_close", |_c: Caller<'_, T>, _fd: i32| -> i32 {
        ESUCCESS
    })?;
    linker.func_wrap(
        M,
        "fd_seek",
        |_c: Caller<'_, T>, _fd: i32, _off: i64, _whence: i32, _out: i32| -> i32 { ESPIPE },
    )?;
    linker.func_wrap(
        M,
        "fd_fdstat_get",
        |mut c: Caller<'_, T>, fd: i32, out: i32| -> i32 {
            if !(0..=2).contains(&fd) {
                return EBADF;
            }
            // filetype unknown (so is_terminal() is false), no flags, rights: read or write.
            let mut stat = [0u8; 24];
            let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 };
            stat[8..16].copy_from_slice(&rights.to_le_bytes());
            if write(&mut c, out, &stat) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        M,
        "fd_prestat_get",
        |_c: Caller<'_, T>, _fd: i32, _out: i32| -> i32 { EBADF },
    )?;
    linker.func_wrap(
        M,
        "fd_prestat_dir_name",
        |_c: Caller<'_, T>, _fd: i32, _p: i32, _l: i32| -> i32 { EBADF },
    )?;
    linker.func_wrap(M, "sched_yield", |_c: Caller<'_, T>| -> i32 { ESUCCESS })?;
    linker.func_wrap(
        M,
        "random_get",
        |mut c: Caller<'_, T>, buf: i32, len: i32| -> i32 {
            let len = len as u32 as usize;
            if len > 64 << 20 {
                return EINVAL;
            }
            let mut bytes = vec![0u8; len];
            c.data_mut().wasi().fill_random(&mut bytes);
            if write(&mut c, buf, &bytes) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        M,
        "poll_oneoff",
        |mut c: Caller<'_, T>, subs: i32, events: i32, n: i32, nevents: i32| -> i32 {
            // Only clock subscriptions (thread::sleep). Virtual time does not move for a
            // sleep, as Envoy offers no sleep at all; real time sleeps.
            let n = n.max(0) as usize;
            let mut count = 0u32;
            for i in 0..n {
                let Some(sub) = read(&mut c, subs.wrapping_add((i * 48) as i32), 48) else {
                    return EFAULT;
                };
                let mut ev = [0u8; 32];
                ev[0..8].copy_from_slice(&sub[0..8]);
                ev[10] = sub[8];
                if sub[8] == 0 {
                    let timeout = u64::from_le_bytes(sub[24..32].try_into().unwrap_or([0; 8]));
                    let absolute = u16::from_le_bytes([sub[40], sub[41]]) & 1 == 1;
                    if let WasiClock::Real(_) = c.data_mut().wasi().clock {
                        if !absolute {
                            std::thread::sleep(std::time::Duration::from_nanos(
                                timeout.min(5_000_000_000),
                            ));
                        }
                    }
                } else {
                    ev[8..10].copy_from_slice(&(ENOSYS as u16).to_le_bytes());
                }
                if !write(&mut c, events.wrapping_add((i * 32) as i32), &ev) {
                    return EFAULT;
                }
                count += 1;
            }
            if write_u32(&mut c, nevents, count) {
                ESUCCESS
            } else {
                EFAULT
            }
        },
    )?;
    linker.func_wrap(
        M,
        "proc_exit",
        |_c: Caller<'_, T>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(ProcExit(code)))
        },
    )?;
    Ok(())
}
