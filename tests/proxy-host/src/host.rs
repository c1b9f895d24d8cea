//! The host side of the proxy-wasm ABI 0.2.1: every `env.proxy_*` import the Rust SDK
//! declares, implemented on the store-held `HostState`. Every guest pointer goes through
//! `GuestMem`, which bounds-checks it; a bad pointer answers `InvalidMemoryAccess` like
//! Envoy (and is recorded as a host error), or traps in strict mode. The host never
//! panics on guest input.

use wasmtime::{Caller, Linker};

use crate::abi::{self, BufferType, LogLevel, MapType, MetricKind, Pair, Status};
use crate::grpc::{self, CallState, GrpcOutbound, GrpcTarget, HttpCall, StreamInfo};
use crate::props;
use crate::state::{HostState, LocalResponse};
use crate::wasi::{self, WasiState, WasiView};

impl WasiView for HostState {
    fn wasi(&mut self) -> &mut WasiState {
        &mut self.wasi
    }

    fn captured_output(&mut self, fd: u32, text: String) {
        let level = if fd == 1 {
            LogLevel::Info
        } else {
            LogLevel::Error
        };
        self.log(level, text);
    }
}

/// A host call that did not succeed: a status for the guest, or a trap.
pub(crate) enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Self {
        Fail::Status(s)
    }
}

type HostResult<T> = Result<T, Fail>;

/// A host error that traps the guest (strict mode, or something Envoy aborts on).
#[derive(Debug, thiserror::Error)]
#[error("host error in {call}: {message}")]
pub struct HostTrap {
    pub call: &'static str,
    pub message: String,
}

const OOB: Fail = Fail::Status(Status::InvalidMemoryAccess);

fn mem_read(c: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let len = len as u32 as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let Some(m) = c.data().memory else {
        return Err(OOB);
    };
    let start = ptr as u32 as usize;
    let end = start.checked_add(len).ok_or(OOB)?;
    m.data(&*c).get(start..end).map(|s| s.to_vec()).ok_or(OOB)
}

fn mem_write(c: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> HostResult<()> {
    let Some(m) = c.data().memory else {
        return Err(OOB);
    };
    let start = ptr as u32 as usize;
    let end = start.checked_add(bytes.len()).ok_or(OOB)?;
    let dst = m.data_mut(&mut *c).get_mut(start..end).ok_or(OOB)?;
    dst.copy_from_slice(bytes);
    Ok(())
}

fn write_u32(c: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> HostResult<()> {
    mem_write(c, ptr, &v.to_le_bytes())
}

/// Copies `data` into memory the guest allocates (`proxy_on_memory_allocate`) and
/// writes its address and size through the two out-pointers. Empty data is (0, 0),
/// as Envoy's `copyToPointerSize` does.
fn copy_out(
    c: &mut Caller<'_, HostState>,
    data: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult<()> {
    // Check the out-pointers before allocating, so a bad one cannot leak guest memory.
    mem_read(c, ptr_ptr, 4)?;
    mem_read(c, size_ptr, 4)?;
    let mut addr = 0u32;
    if !data.is_empty() {
        let Some(alloc) = c.data().alloc.clone() else {
            return Err(Fail::Trap(wasmtime::Error::msg(
                "guest exports no proxy_on_memory_allocate or malloc",
            )));
        };
        let p = alloc.call(&mut *c, data.len() as i32).map_err(Fail::Trap)?;
        if p == 0 {
            return Err(Fail::Status(Status::InternalFailure));
        }
        mem_write(c, p, data).map_err(|_| {
            Fail::Trap(wasmtime::Error::msg(format!(
                "guest allocator returned {p:#x}, which is outside its memory for {} bytes",
                data.len()
            )))
        })?;
        addr = p as u32;
    }
    write_u32(c, ptr_ptr, addr)?;
    write_u32(c, size_ptr, data.len() as u32)?;
    Ok(())
}

/// Turns a host call's outcome into the guest's return code, recording what a real
/// Envoy would have logged.
fn finish(
    c: &mut Caller<'_, HostState>,
    call: &'static str,
    r: HostResult<()>,
) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(0),
        Err(Fail::Status(s)) => {
            if s == Status::InvalidMemoryAccess {
                let msg = format!("{call}: guest pointer outside linear memory");
                c.data_mut().host_error(msg.clone());
                if c.data().strict {
                    return Err(wasmtime::Error::new(HostTrap { call, message: msg }));
                }
            }
            Ok(s.code())
        }
        Err(Fail::Trap(e)) => Err(e),
    }
}

fn bad_enum(c: &mut Caller<'_, HostState>, call: &'static str, what: &str, v: i32) -> Fail {
    c.data_mut()
        .host_error(format!("{call}: unknown {what} {v}"));
    Fail::Status(Status::BadArgument)
}

fn lower(key: &[u8]) -> String {
    String::from_utf8_lossy(key).to_ascii_lowercase()
}

fn map_mut(st: &mut HostState, t: MapType) -> Option<&mut Vec<Pair>> {
    match t {
        MapType::RequestHeaders
        | MapType::RequestTrailers
        | MapType::ResponseHeaders
        | MapType::ResponseTrailers => {
            let s = st.active_stream()?;
            Some(match t {
                MapType::RequestHeaders => &mut s.request_headers,
                MapType::RequestTrailers => &mut s.request_trailers,
                MapType::ResponseHeaders => &mut s.response_headers,
                _ => &mut s.response_trailers,
            })
        }
        other => st.callback_maps.get_mut(&other),
    }
}

fn map_type(c: &mut Caller<'_, HostState>, call: &'static str, t: i32) -> HostResult<MapType> {
    MapType::from_u32(t as u32).ok_or_else(|| bad_enum(c, call, "map type", t))
}

fn buffer(st: &mut HostState, t: BufferType) -> Option<Vec<u8>> {
    match t {
        BufferType::PluginConfiguration => Some(st.plugin_config.clone()),
        BufferType::VmConfiguration => Some(st.vm_config.clone()),
        BufferType::RequestBody => st.active_stream().map(|s| s.request_body.clone()),
        BufferType::ResponseBody => st.active_stream().map(|s| s.response_body.clone()),
        BufferType::GrpcReceiveBuffer | BufferType::HttpCallResponseBody => {
            st.callback_buffer.clone()
        }
        _ => None,
    }
}

/// Registers every proxy-wasm and WASI import on a linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    const E: &str = "env";

    linker.func_wrap(
        E,
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            let r = (|| {
                let Some(level) = LogLevel::from_u32(level as u32) else {
                    return Err(bad_enum(&mut c, "proxy_log", "log level", level));
                };
                let msg = mem_read(&mut c, ptr, len)?;
                c.data_mut()
                    .log(level, String::from_utf8_lossy(&msg).into_owned());
                Ok(())
            })();
            finish(&mut c, "proxy_log", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_log_level",
        |mut c: Caller<'_, HostState>, out: i32| {
            let level = c.data().log_level as u32;
            let r = write_u32(&mut c, out, level);
            finish(&mut c, "proxy_get_log_level", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, out: i32| {
            let now = c.data().shared.now_unix_nanos();
            let r = mem_write(&mut c, out, &now.to_le_bytes());
            finish(&mut c, "proxy_get_current_time_nanoseconds", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, HostState>, ms: i32| {
            let ms = ms as u32;
            let now = c.data().shared.monotonic_nanos();
            let st = c.data_mut();
            st.tick_period_ms = ms;
            st.next_tick_mono_ns = if ms == 0 {
                None
            } else {
                Some(now + u64::from(ms) * 1_000_000)
            };
            Ok::<i32, wasmtime::Error>(0)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         t: i32,
         start: i32,
         max: i32,
         ptr_ptr: i32,
         size_ptr: i32| {
            let r = (|| {
                let Some(t) = BufferType::from_u32(t as u32) else {
                    return Err(bad_enum(&mut c, "proxy_get_buffer_bytes", "buffer type", t));
                };
                let data = buffer(c.data_mut(), t).ok_or(Status::NotFound)?;
                let start = start as u32 as usize;
                let max = max as u32 as usize;
                if start.checked_add(max).is_none() {
                    return Err(Status::BadArgument.into());
                }
                if start > data.len() {
                    return Err(Status::BadArgument.into());
                }
                let end = (start + max).min(data.len());
                if end > start {
                    copy_out(&mut c, &data[start..end], ptr_ptr, size_ptr)?;
                }
                Ok(())
            })();
            finish(&mut c, "proxy_get_buffer_bytes", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>, t: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let r = (|| {
                let Some(t) = BufferType::from_u32(t as u32) else {
                    return Err(bad_enum(&mut c, "proxy_set_buffer_bytes", "buffer type", t));
                };
                let data = mem_read(&mut c, ptr, len)?;
                let st = c.data_mut();
                let buf = match t {
                    BufferType::RequestBody => st.active_stream().map(|s| &mut s.request_body),
                    BufferType::ResponseBody => st.active_stream().map(|s| &mut s.response_body),
                    _ => None,
                }
                .ok_or(Status::NotFound)?;
                let start = (start as u32 as usize).min(buf.len());
                let end = start.saturating_add(size as u32 as usize).min(buf.len());
                buf.splice(start..end, data);
                Ok(())
            })();
            finish(&mut c, "proxy_set_buffer_bytes", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, t: i32, ptr_ptr: i32, size_ptr: i32| {
            let r = (|| {
                let t = map_type(&mut c, "proxy_get_header_map_pairs", t)?;
                let bytes = match map_mut(c.data_mut(), t) {
                    Some(m) => abi::encode_pairs(m),
                    None => return Err(Status::NotFound.into()),
                };
                copy_out(&mut c, &bytes, ptr_ptr, size_ptr)
            })();
            finish(&mut c, "proxy_get_header_map_pairs", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, t: i32, ptr: i32, len: i32| {
            let r = (|| {
                let t = map_type(&mut c, "proxy_set_header_map_pairs", t)?;
                let raw = mem_read(&mut c, ptr, len)?;
                let pairs = match abi::decode_pairs(&raw) {
                    Ok(p) => p,
                    Err(e) => {
                        c.data_mut()
                            .host_error(format!("proxy_set_header_map_pairs: {e}"));
                        return Err(Status::BadArgument.into());
                    }
                };
                let m = map_mut(c.data_mut(), t).ok_or(Status::NotFound)?;
                *m = pairs.into_iter().map(|(k, v)| (lower(&k), v)).collect();
                Ok(())
            })();
            finish(&mut c, "proxy_set_header_map_pairs", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>, t: i32, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32| {
            let r = (|| {
                let t = map_type(&mut c, "proxy_get_header_map_value", t)?;
                let key = lower(&mem_read(&mut c, kp, kl)?);
                let m = map_mut(c.data_mut(), t).ok_or(Status::NotFound)?;
                let v = m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
                let v = v.ok_or(Status::NotFound)?;
                copy_out(&mut c, &v, ptr_ptr, size_ptr)
            })();
            finish(&mut c, "proxy_get_header_map_value", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            let r = (|| {
                let t = map_type(&mut c, "proxy_add_header_map_value", t)?;
                let key = lower(&mem_read(&mut c, kp, kl)?);
                let value = mem_read(&mut c, vp, vl)?;
                let m = map_mut(c.data_mut(), t).ok_or(Status::NotFound)?;
                m.push((key, value));
                Ok(())
            })();
            finish(&mut c, "proxy_add_header_map_value", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            let r = (|| {
                let t = map_type(&mut c, "proxy_replace_header_map_value", t)?;
                let key = lower(&mem_read(&mut c, kp, kl)?);
                let value = mem_read(&mut c, vp, vl)?;
                let m = map_mut(c.data_mut(), t).ok_or(Status::NotFound)?;
                // Envoy's setCopy, as observed on Envoy 1.39: every entry of the key is
                // removed and one is appended at the end.
                m.retain(|(k, _)| *k != key);
                m.push((key, value));
                Ok(())
            })();
            finish(&mut c, "proxy_replace_header_map_value", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, t: i32, kp: i32, kl: i32| {
            let r = (|| {
                let t = map_type(&mut c, "proxy_remove_header_map_value", t)?;
                let key = lower(&mem_read(&mut c, kp, kl)?);
                let m = map_mut(c.data_mut(), t).ok_or(Status::NotFound)?;
                m.retain(|(k, _)| *k != key);
                Ok(())
            })();
            finish(&mut c, "proxy_remove_header_map_value", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32| {
            let r = (|| {
                let path = abi::property_path_to_dotted(&mem_read(&mut c, pp, pl)?);
                let v = props::lookup(c.data_mut(), &path).ok_or(Status::NotFound)?;
                copy_out(&mut c, &v, ptr_ptr, size_ptr)
            })();
            finish(&mut c, "proxy_get_property", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_set_property",
        |mut c: Caller<'_, HostState>, pp: i32, pl: i32, vp: i32, vl: i32| {
            let r = (|| {
                let path = abi::property_path_to_dotted(&mem_read(&mut c, pp, pl)?);
                let v = mem_read(&mut c, vp, vl)?;
                let st = c.data_mut();
                match st.active_stream() {
                    Some(s) => {
                        s.guest_properties.insert(path, v);
                    }
                    None => {
                        st.vm_properties.insert(path, v);
                    }
                }
                Ok(())
            })();
            finish(&mut c, "proxy_set_property", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         ptr_ptr: i32,
         size_ptr: i32,
         cas_ptr: i32| {
            let r = (|| {
                let key = mem_read(&mut c, kp, kl)?;
                let (value, cas) = {
                    let st = c.data();
                    st.shared
                        .lock()
                        .get_shared(&st.vm_id, &key)
                        .ok_or(Status::NotFound)?
                };
                copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
                write_u32(&mut c, cas_ptr, cas)
            })();
            finish(&mut c, "proxy_get_shared_data", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
            let r = (|| {
                let key = mem_read(&mut c, kp, kl)?;
                let value = mem_read(&mut c, vp, vl)?;
                let st = c.data();
                let s = st
                    .shared
                    .lock()
                    .set_shared(&st.vm_id, &key, &value, cas as u32);
                if s == Status::Ok {
                    Ok(())
                } else {
                    Err(s.into())
                }
            })();
            finish(&mut c, "proxy_set_shared_data", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, np: i32, nl: i32, out: i32| {
            let r = (|| {
                mem_read(&mut c, out, 4)?;
                let name = String::from_utf8_lossy(&mem_read(&mut c, np, nl)?).into_owned();
                let token = {
                    let st = c.data();
                    // Envoy wakes the root context of the registering context.
                    st.shared.lock().register_queue(
                        &st.vm_id,
                        &name,
                        st.vm_index,
                        st.root_context_id,
                    )
                };
                write_u32(&mut c, out, token)
            })();
            finish(&mut c, "proxy_register_shared_queue", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, HostState>, vp: i32, vl: i32, np: i32, nl: i32, out: i32| {
            let r = (|| {
                let vm_id = String::from_utf8_lossy(&mem_read(&mut c, vp, vl)?).into_owned();
                let name = String::from_utf8_lossy(&mem_read(&mut c, np, nl)?).into_owned();
                let token = c
                    .data()
                    .shared
                    .lock()
                    .queue_tokens
                    .get(&(vm_id, name))
                    .copied();
                write_u32(&mut c, out, token.ok_or(Status::NotFound)?)
            })();
            finish(&mut c, "proxy_resolve_shared_queue", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, HostState>, token: i32, vp: i32, vl: i32| {
            let r = (|| {
                let value = mem_read(&mut c, vp, vl)?;
                let s = c.data().shared.lock().enqueue(token as u32, &value);
                if s == Status::Ok {
                    Ok(())
                } else {
                    Err(s.into())
                }
            })();
            finish(&mut c, "proxy_enqueue_shared_queue", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, HostState>, token: i32, ptr_ptr: i32, size_ptr: i32| {
            let r = (|| {
                let item = {
                    let st = c.data();
                    let mut g = st.shared.lock();
                    let q = g.queues.get_mut(&(token as u32)).ok_or(Status::NotFound)?;
                    q.items.pop_front().ok_or(Status::Empty)?
                };
                copy_out(&mut c, &item, ptr_ptr, size_ptr)
            })();
            finish(&mut c, "proxy_dequeue_shared_queue", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_continue_stream",
        |mut c: Caller<'_, HostState>, t: i32| {
            let r = (|| {
                let s = c.data_mut().active_stream().ok_or(Status::NotFound)?;
                match t {
                    0 => s.continued_request += 1,
                    1 => s.continued_response += 1,
                    2 | 3 => {}
                    _ => return Err(Status::BadArgument.into()),
                }
                Ok(())
            })();
            finish(&mut c, "proxy_continue_stream", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_close_stream",
        |mut c: Caller<'_, HostState>, t: i32| {
            let r = (|| {
                if !(0..=3).contains(&t) {
                    return Err(Status::BadArgument.into());
                }
                let s = c.data_mut().active_stream().ok_or(Status::NotFound)?;
                s.closed.push(t as u32);
                Ok(())
            })();
            finish(&mut c, "proxy_close_stream", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc_status: i32| {
            let r = (|| {
                let details = mem_read(&mut c, dp, dl)?;
                let body = mem_read(&mut c, bp, bl)?;
                let raw = mem_read(&mut c, hp, hl)?;
                let headers = match abi::decode_pairs(&raw) {
                    Ok(p) => p.into_iter().map(|(k, v)| (lower(&k), v)).collect(),
                    Err(e) => {
                        c.data_mut()
                            .host_error(format!("proxy_send_local_response: {e}"));
                        Vec::new()
                    }
                };
                let st = c.data_mut();
                let s = st.active_stream().ok_or(Status::NotFound)?;
                if s.local_response.is_some() {
                    // Envoy sends one local reply per stream; a second would be a filter bug.
                    st.host_error("proxy_send_local_response: called twice on one stream".into());
                    return Err(Status::BadArgument.into());
                }
                s.local_response = Some(LocalResponse {
                    status: status as u32,
                    details: String::from_utf8_lossy(&details).into_owned(),
                    body,
                    headers,
                    grpc_status,
                });
                Ok(())
            })();
            finish(&mut c, "proxy_send_local_response", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         out: i32| {
            let r = (|| {
                let upstream = String::from_utf8_lossy(&mem_read(&mut c, up, ul)?).into_owned();
                let raw_headers = mem_read(&mut c, hp, hl)?;
                let body = mem_read(&mut c, bp, bl)?;
                let raw_trailers = mem_read(&mut c, tp, tl)?;
                mem_read(&mut c, out, 4)?;
                let (Ok(headers), Ok(trailers)) = (
                    abi::decode_pairs(&raw_headers),
                    abi::decode_pairs(&raw_trailers),
                ) else {
                    c.data_mut()
                        .host_error("proxy_http_call: malformed header pairs".into());
                    return Err(Status::BadArgument.into());
                };
                let headers: Vec<Pair> = headers.into_iter().map(|(k, v)| (lower(&k), v)).collect();
                let trailers = trailers.into_iter().map(|(k, v)| (lower(&k), v)).collect();
                // Envoy refuses a call without these, and one to a cluster it does not know.
                for required in [":method", ":path", ":authority"] {
                    if !headers.iter().any(|(k, _)| k == required) {
                        return Err(Status::BadArgument.into());
                    }
                }
                let known = c.data().shared.lock().known_clusters.clone();
                if let Some(known) = known {
                    if !known.contains(&upstream) {
                        return Err(Status::BadArgument.into());
                    }
                }
                let now = c.data().shared.monotonic_nanos();
                let st = c.data_mut();
                st.grpc.next_http_token += 1;
                let token = st.grpc.next_http_token;
                let timeout_ms = timeout as u32;
                st.grpc.http_calls.insert(
                    token,
                    (timeout_ms > 0).then(|| now + u64::from(timeout_ms) * 1_000_000),
                );
                st.grpc.http_outbox.push(HttpCall {
                    token,
                    upstream,
                    headers,
                    body,
                    trailers,
                    timeout_ms,
                });
                write_u32(&mut c, out, token)
            })();
            finish(&mut c, "proxy_http_call", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_grpc_call",
        |mut c: Caller<'_, HostState>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         msgp: i32,
         msgl: i32,
         timeout: i32,
         out: i32| {
            let r = (|| {
                let target = read_target(
                    &mut c,
                    "proxy_grpc_call",
                    (sp, sl),
                    (np, nl),
                    (mp, ml),
                    (ip, il),
                )?;
                let message = mem_read(&mut c, msgp, msgl)?;
                mem_read(&mut c, out, 4)?;
                let now = c.data().shared.monotonic_nanos();
                let st = c.data_mut();
                let token = st.grpc.next(false);
                let timeout_ms = timeout as u32;
                st.grpc.calls.insert(
                    token,
                    CallState {
                        deadline_mono_ns: (timeout_ms > 0)
                            .then(|| now + u64::from(timeout_ms) * 1_000_000),
                    },
                );
                st.grpc.push(GrpcOutbound::CallStarted {
                    token,
                    target,
                    message,
                    timeout_ms,
                });
                write_u32(&mut c, out, token)
            })();
            finish(&mut c, "proxy_grpc_call", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_grpc_stream",
        |mut c: Caller<'_, HostState>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         out: i32| {
            let r = (|| {
                let target = read_target(
                    &mut c,
                    "proxy_grpc_stream",
                    (sp, sl),
                    (np, nl),
                    (mp, ml),
                    (ip, il),
                )?;
                mem_read(&mut c, out, 4)?;
                let st = c.data_mut();
                let token = st.grpc.next(true);
                st.grpc.streams.insert(
                    token,
                    StreamInfo {
                        local_closed: false,
                    },
                );
                st.grpc.push(GrpcOutbound::StreamOpened { token, target });
                write_u32(&mut c, out, token)
            })();
            finish(&mut c, "proxy_grpc_stream", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_grpc_send",
        |mut c: Caller<'_, HostState>, token: i32, mp: i32, ml: i32, end: i32| {
            let r = (|| {
                let message = mem_read(&mut c, mp, ml)?;
                let token = token as u32;
                let st = c.data_mut();
                if token % 2 == 1 {
                    return Err(Status::BadArgument.into());
                }
                let s = st.grpc.streams.get_mut(&token).ok_or(Status::NotFound)?;
                if s.local_closed {
                    return Err(Status::NotFound.into());
                }
                if end != 0 {
                    s.local_closed = true;
                }
                st.grpc.push(GrpcOutbound::StreamMessage {
                    token,
                    message,
                    end_stream: end != 0,
                });
                Ok(())
            })();
            finish(&mut c, "proxy_grpc_send", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_grpc_cancel",
        |mut c: Caller<'_, HostState>, token: i32| {
            let r = (|| {
                let token = token as u32;
                let st = c.data_mut();
                if st.grpc.calls.remove(&token).is_some() {
                    st.grpc.push(GrpcOutbound::CallCancelled { token });
                } else if st.grpc.streams.remove(&token).is_some() {
                    st.grpc.push(GrpcOutbound::StreamCancelled { token });
                } else {
                    return Err(Status::NotFound.into());
                }
                Ok(())
            })();
            finish(&mut c, "proxy_grpc_cancel", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_grpc_close",
        |mut c: Caller<'_, HostState>, token: i32| {
            let r = (|| {
                let token = token as u32;
                let st = c.data_mut();
                if st.grpc.calls.remove(&token).is_some() {
                    st.grpc.push(GrpcOutbound::CallCancelled { token });
                } else if let Some(s) = st.grpc.streams.get_mut(&token) {
                    if !s.local_closed {
                        s.local_closed = true;
                        st.grpc.push(GrpcOutbound::StreamClosed { token });
                    }
                } else {
                    return Err(Status::NotFound.into());
                }
                Ok(())
            })();
            finish(&mut c, "proxy_grpc_close", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_status",
        |mut c: Caller<'_, HostState>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| {
            let r = (|| {
                let (code, msg) = c.data().grpc_status.clone();
                write_u32(&mut c, code_ptr, code)?;
                copy_out(&mut c, &msg, ptr_ptr, size_ptr)
            })();
            finish(&mut c, "proxy_get_status", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_set_effective_context",
        |mut c: Caller<'_, HostState>, id: i32| {
            let id = id as u32;
            let st = c.data_mut();
            if id == st.root_context_id || st.streams.contains_key(&id) {
                st.effective_context = id;
                Ok::<i32, wasmtime::Error>(0)
            } else {
                Ok(Status::BadArgument.code())
            }
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_call_foreign_function",
        |mut c: Caller<'_, HostState>, fp: i32, fl: i32, ap: i32, al: i32, rp: i32, rl: i32| {
            let r = (|| {
                let name = String::from_utf8_lossy(&mem_read(&mut c, fp, fl)?).into_owned();
                let args = mem_read(&mut c, ap, al)?;
                if name == "clear_route_cache" {
                    let s = c.data_mut().active_stream().ok_or(Status::NotFound)?;
                    s.route_cache_cleared += 1;
                    return copy_out(&mut c, &[], rp, rl);
                }
                let f = c.data().shared.lock().foreign.get(&name).cloned();
                let f = f.ok_or(Status::NotFound)?;
                let out = f(&args)?;
                copy_out(&mut c, &out, rp, rl)
            })();
            finish(&mut c, "proxy_call_foreign_function", r)
        },
    )?;

    linker.func_wrap(E, "proxy_done", |mut c: Caller<'_, HostState>| {
        let st = c.data_mut();
        if st.active_context() != st.root_context_id {
            return Ok::<i32, wasmtime::Error>(Status::NotFound.code());
        }
        st.done_called = true;
        Ok(0)
    })?;

    linker.func_wrap(
        E,
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, kind: i32, np: i32, nl: i32, out: i32| {
            let r = (|| {
                let Some(kind) = MetricKind::from_u32(kind as u32) else {
                    return Err(bad_enum(&mut c, "proxy_define_metric", "metric type", kind));
                };
                let name = String::from_utf8_lossy(&mem_read(&mut c, np, nl)?).into_owned();
                mem_read(&mut c, out, 4)?;
                let st = c.data_mut();
                let idx = st.shared.lock().define_metric(kind, &name);
                let id = match st.metric_ids.iter().find(|(_, i)| **i == idx) {
                    Some((id, _)) => *id,
                    None => {
                        // Envoy folds the type into the id's low bits; so do we.
                        st.next_metric_id += 1;
                        let id = (st.next_metric_id << 2) | kind as u32;
                        st.metric_ids.insert(id, idx);
                        id
                    }
                };
                write_u32(&mut c, out, id)
            })();
            finish(&mut c, "proxy_define_metric", r)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, offset: i64| {
            let st = c.data_mut();
            let Some(idx) = st.metric_ids.get(&(id as u32)).copied() else {
                return Ok::<i32, wasmtime::Error>(Status::NotFound.code());
            };
            let mut g = st.shared.lock();
            let m = &mut g.metrics[idx];
            let code = match m.kind {
                MetricKind::Counter if offset < 0 => Status::BadArgument.code(),
                MetricKind::Counter | MetricKind::Gauge => {
                    m.value = m.value.saturating_add(offset);
                    0
                }
                MetricKind::Histogram => Status::BadArgument.code(),
            };
            Ok(code)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, value: i64| {
            let st = c.data_mut();
            let Some(idx) = st.metric_ids.get(&(id as u32)).copied() else {
                return Ok::<i32, wasmtime::Error>(Status::NotFound.code());
            };
            let mut g = st.shared.lock();
            let m = &mut g.metrics[idx];
            match m.kind {
                MetricKind::Counter => m.value = m.value.saturating_add(value),
                MetricKind::Gauge => m.value = value,
                MetricKind::Histogram => m.samples.push(value as u64),
            }
            Ok(0)
        },
    )?;

    linker.func_wrap(
        E,
        "proxy_get_metric",
        |mut c: Caller<'_, HostState>, id: i32, out: i32| {
            let r = (|| {
                let st = c.data();
                let idx = st
                    .metric_ids
                    .get(&(id as u32))
                    .copied()
                    .ok_or(Status::NotFound)?;
                let m = st.shared.lock().metrics[idx].clone();
                if m.kind == MetricKind::Histogram {
                    return Err(Status::BadArgument.into());
                }
                mem_write(&mut c, out, &(m.value as u64).to_le_bytes())
            })();
            finish(&mut c, "proxy_get_metric", r)
        },
    )?;

    Ok(())
}

fn read_target(
    c: &mut Caller<'_, HostState>,
    call: &'static str,
    cluster: (i32, i32),
    service: (i32, i32),
    method: (i32, i32),
    metadata: (i32, i32),
) -> HostResult<GrpcTarget> {
    let cluster = mem_read(c, cluster.0, cluster.1)?;
    let service = String::from_utf8_lossy(&mem_read(c, service.0, service.1)?).into_owned();
    let method = String::from_utf8_lossy(&mem_read(c, method.0, method.1)?).into_owned();
    let raw = mem_read(c, metadata.0, metadata.1)?;
    let initial_metadata = match abi::decode_pairs(&raw) {
        Ok(p) => p.into_iter().map(|(k, v)| (lower(&k), v)).collect(),
        Err(e) => {
            c.data_mut()
                .host_error(format!("{call}: initial metadata: {e}"));
            return Err(Status::BadArgument.into());
        }
    };
    let cluster = match grpc::parse_grpc_service(&cluster) {
        Ok(name) => name,
        Err(why) => {
            c.data_mut().host_error(format!("{call}: {why}"));
            return Err(Fail::Trap(wasmtime::Error::new(HostTrap {
                call,
                message: why,
            })));
        }
    };
    Ok(GrpcTarget {
        cluster,
        service,
        method,
        initial_metadata,
    })
}
