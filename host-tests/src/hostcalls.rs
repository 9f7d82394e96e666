//! The host functions Envoy links into a proxy-wasm module (module `env`) and its WASI
//! allowlist, implemented with Envoy's statuses and semantics (envoy context.cc, cpp-host).

use wasmtime::{Caller, Extern, Linker};

use crate::abi::{
    buffer_type, errno, map_type, stream_type, LogLevel, MetricKind, Status, ALLOWED_DURING_START,
    WASI_MODULES,
};
use crate::failure::VmFailure;
use crate::headers::Headers;
use crate::vm::{Deferred, LocalReply, VmState};
use crate::world::{GrpcCall, HttpCall, MetricState, Posted, Queue, SharedValue};

type C<'a> = Caller<'a, VmState>;

fn memory(c: &mut C<'_>) -> Option<wasmtime::Memory> {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(c).ok_or(Status::InvalidMemoryAccess)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(&*c)
        .get(ptr..ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Status> {
    read(c, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(c).ok_or(Status::InvalidMemoryAccess)?;
    mem.write(&mut *c, ptr as u32 as usize, bytes)
        .map_err(|_| Status::InvalidMemoryAccess)
}

fn write_u32(c: &mut C<'_>, ptr: i32, value: u32) -> Result<(), Status> {
    write(c, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates (`proxy_on_memory_allocate`, exact size)
/// and writes its address and size. Empty data is returned as a null pointer and size 0.
fn give(c: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> Result<(), Status> {
    if bytes.is_empty() {
        write_u32(c, ptr_ptr, 0)?;
        return write_u32(c, size_ptr, 0);
    }
    let alloc = c
        .get_export("proxy_on_memory_allocate")
        .or_else(|| c.get_export("malloc"))
        .and_then(Extern::into_func)
        .ok_or(Status::InvalidMemoryAccess)?;
    let alloc = alloc
        .typed::<i32, i32>(&*c)
        .map_err(|_| Status::InvalidMemoryAccess)?;
    let addr = alloc
        .call(&mut *c, bytes.len() as i32)
        .map_err(|_| Status::InvalidMemoryAccess)?;
    if addr == 0 {
        return Err(Status::InvalidMemoryAccess);
    }
    write(c, addr, bytes)?;
    write_u32(c, ptr_ptr, addr as u32)?;
    write_u32(c, size_ptr, bytes.len() as u32)
}

fn code(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}

/// Envoy stubs restricted capabilities while `_initialize` runs: the call fails and logs.
fn restricted(c: &mut C<'_>, name: &'static str) -> bool {
    *c.data_mut().host_calls.entry(name).or_insert(0) += 1;
    if c.data().starting && !ALLOWED_DURING_START.contains(&name) {
        c.data().log(
            LogLevel::Error,
            format!("Attempted call to restricted proxy-wasm capability: {name}"),
        );
        return true;
    }
    false
}

/// A failure the test injected for this call (`World::fail_host_call`), if any is left.
fn injected(c: &mut C<'_>, name: &'static str) -> Option<i32> {
    let state = c.data();
    let mut world = state.world.lock();
    let (status, left) = world.faults.get_mut(name)?;
    if *left == 0 {
        return None;
    }
    if *left != u32::MAX {
        *left -= 1;
    }
    Some(*status)
}

macro_rules! guard {
    ($c:expr, $name:literal) => {
        if restricted(&mut $c, $name) {
            return Status::InternalFailure.code();
        }
        if let Some(status) = injected(&mut $c, $name) {
            return status;
        }
    };
}

/// The header map a selector names, read-only view (Envoy `getConstMap`).
fn const_map(state: &VmState, map: i32) -> Option<Headers> {
    let stream = state.streams.get(&state.effective_context);
    let log_phase = stream.map(|s| s.in_log_phase).unwrap_or(false);
    match map {
        map_type::REQUEST_HEADERS => stream.and_then(|s| {
            if log_phase {
                s.request
                    .headers
                    .clone()
                    .or_else(|| s.request.last_headers.clone())
            } else {
                s.request.headers.clone()
            }
        }),
        map_type::REQUEST_TRAILERS => stream.and_then(|s| {
            if log_phase {
                None
            } else {
                s.request.trailers.clone()
            }
        }),
        map_type::RESPONSE_HEADERS => stream.and_then(|s| {
            if log_phase {
                s.response
                    .headers
                    .clone()
                    .or_else(|| s.response.last_headers.clone())
            } else {
                s.response.headers.clone()
            }
        }),
        map_type::RESPONSE_TRAILERS => stream.and_then(|s| {
            if log_phase {
                s.response
                    .trailers
                    .clone()
                    .or_else(|| s.response.forwarded_trailers.clone())
            } else {
                s.response.trailers.clone()
            }
        }),
        map_type::GRPC_RECEIVE_INITIAL_METADATA => state.grpc_receive.headers.clone(),
        map_type::GRPC_RECEIVE_TRAILING_METADATA => state.grpc_receive.trailers.clone(),
        map_type::HTTP_CALL_RESPONSE_HEADERS => {
            state.call_response.as_ref().and_then(|r| r.headers.clone())
        }
        map_type::HTTP_CALL_RESPONSE_TRAILERS => state
            .call_response
            .as_ref()
            .and_then(|r| r.trailers.clone()),
        _ => None,
    }
}

/// The header map a selector names, for mutation (Envoy `getMap`: stream maps only).
fn mutable_map(state: &mut VmState, map: i32) -> Option<&mut Headers> {
    let context = state.effective_context;
    let stream = state.streams.get_mut(&context)?;
    match map {
        map_type::REQUEST_HEADERS => stream.request.headers.as_mut(),
        map_type::REQUEST_TRAILERS => {
            // Envoy adds request trailers when asked for them in the last body callback.
            if stream.request.trailers.is_none()
                && stream.request.body_visible
                && stream.request.end_of_stream
            {
                stream.request.trailers = Some(Headers::new());
            }
            stream.request.trailers.as_mut()
        }
        map_type::RESPONSE_HEADERS => stream.response.headers.as_mut(),
        map_type::RESPONSE_TRAILERS => {
            if stream.response.trailers.is_none()
                && stream.response.body_visible
                && stream.response.end_of_stream
            {
                stream.response.trailers = Some(Headers::new());
            }
            stream.response.trailers.as_mut()
        }
        _ => None,
    }
}

fn buffer(state: &VmState, kind: i32) -> Result<Option<Vec<u8>>, Status> {
    let stream = state.streams.get(&state.effective_context);
    Ok(match kind {
        // Envoy wraps a null body pointer in an empty buffer: reading a body outside its
        // callback is Ok with no data (checked against Envoy by the probe-parity test).
        buffer_type::HTTP_REQUEST_BODY => Some(
            stream
                .filter(|s| s.request.body_visible)
                .map(|s| s.request.body.clone())
                .unwrap_or_default(),
        ),
        buffer_type::HTTP_RESPONSE_BODY => Some(
            stream
                .filter(|s| s.response.body_visible)
                .map(|s| s.response.body.clone())
                .unwrap_or_default(),
        ),
        buffer_type::DOWNSTREAM_DATA | buffer_type::UPSTREAM_DATA => Some(Vec::new()),
        buffer_type::HTTP_CALL_RESPONSE_BODY => {
            state.call_response.as_ref().and_then(|r| r.body.clone())
        }
        buffer_type::GRPC_RECEIVE_BUFFER => state.grpc_receive.body.clone(),
        buffer_type::VM_CONFIGURATION => Some(state.options.vm_configuration.clone()),
        buffer_type::PLUGIN_CONFIGURATION => state
            .configuring
            .then(|| state.options.configuration.clone()),
        buffer_type::CALL_DATA => Some(Vec::new()),
        _ => return Err(Status::BadArgument),
    })
}

fn int(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// Envoy's attributes (properties), encoded as Envoy serializes CEL values:
/// strings raw, integers as 8 bytes little-endian, timestamps as i64 nanoseconds.
fn property(state: &VmState, path: &[&str]) -> Option<Vec<u8>> {
    let options = &state.options;
    match path {
        ["plugin_name"] => return Some(options.plugin_name.clone().into_bytes()),
        ["plugin_root_id"] => return Some(options.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => return Some(options.vm_id.clone().into_bytes()),
        _ => {}
    }
    let stream = state.streams.get(&state.effective_context)?;
    if let Some(value) = stream.properties.get(&path.join("\0")) {
        return Some(value.clone());
    }
    let request = stream
        .request
        .headers
        .as_ref()
        .or(stream.request.last_headers.as_ref());
    let header = |name: &str| {
        request.and_then(|h| {
            h.pairs()
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let (address, port) = stream
        .source_address
        .rsplit_once(':')
        .unwrap_or((stream.source_address.as_str(), "0"));
    Some(match path {
        ["request", "path"] => header(":path")?,
        ["request", "url_path"] => {
            let p = header(":path")?;
            p.split(|b| *b == b'?').next().unwrap_or_default().to_vec()
        }
        ["request", "query"] => {
            let p = header(":path")?;
            p.iter()
                .position(|b| *b == b'?')
                .map(|i| p[i + 1..].to_vec())
                .unwrap_or_default()
        }
        ["request", "host"] => header(":authority")?,
        ["request", "method"] => header(":method")?,
        ["request", "scheme"] => header(":scheme")?,
        ["request", "id"] => header("x-request-id")?,
        ["request", "useragent"] => header("user-agent")?,
        ["request", "referer"] => header("referer")?,
        ["request", "protocol"] => b"HTTP/1.1".to_vec(),
        ["request", "time"] => int(stream.start_nanos as i64),
        ["source", "address"] => stream.source_address.clone().into_bytes(),
        ["source", "port"] => int(port.parse().unwrap_or(0)),
        ["destination", "address"] => b"127.0.0.1:10000".to_vec(),
        ["destination", "port"] => int(10000),
        ["connection", "id"] => int(state.effective_context as i64),
        ["response", "code"] => int(stream.response_code? as i64),
        ["response", "flags"] => int(0),
        ["response", "code_details"] => match &stream.local_reply {
            Some(reply) => reply.details.clone().into_bytes(),
            None => b"via_upstream".to_vec(),
        },
        ["xds", "route_name"] => options.route_name.clone().into_bytes(),
        // Envoy resolves the route (and with it the cluster) before the first filter sees the
        // request headers: checked against Envoy 1.40 by the response cache's refresh test.
        ["xds", "cluster_name"] => {
            request?;
            options.cluster_name.clone().into_bytes()
        }
        _ => {
            let _ = address;
            return None;
        }
    })
}

pub(crate) fn linker() -> Result<Linker<VmState>, VmFailure> {
    let mut l: Linker<VmState> = Linker::new(crate::module::engine());
    define_env(&mut l).map_err(|e| VmFailure::load(format!("host linker: {e:#}")))?;
    for module in WASI_MODULES {
        define_wasi(&mut l, module).map_err(|e| VmFailure::load(format!("host linker: {e:#}")))?;
    }
    Ok(l)
}

fn define_env(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let Some(level) = LogLevel::from_raw(level) else {
                return Status::BadArgument.code();
            };
            match read_str(&mut c, ptr, len) {
                Ok(message) => {
                    c.data().log(level, message);
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ptr: i32| -> i32 {
            guard!(c, "proxy_get_log_level");
            let level = c.data().world.lock().log_level as u32;
            code(write_u32(&mut c, ptr, level))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ptr: i32| -> i32 {
            guard!(c, "proxy_get_current_time_nanoseconds");
            let now = c.data().world.now_nanos();
            code(write(&mut c, ptr, &now.to_le_bytes()))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> i32 {
            guard!(c, "proxy_set_tick_period_milliseconds");
            let index = c.data().index;
            let mut world = c.data().world.lock();
            if ms == 0 {
                world.ticks.remove(&index);
            } else {
                let period = ms as u32 as u64 * 1_000_000;
                let first = world.now_nanos + period;
                world.ticks.insert(index, (period, first));
            }
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_buffer_bytes");
            // Arguments are unsigned 32-bit words (cpp-host `Word`).
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            match buffer(c.data(), kind) {
                Err(s) => s.code(),
                Ok(None) => Status::NotFound.code(),
                Ok(Some(bytes)) => {
                    if start > bytes.len() {
                        return Status::BadArgument.code();
                    }
                    let end = bytes.len().min(start.saturating_add(max));
                    code(give(&mut c, &bytes[start..end], ptr_ptr, size_ptr))
                }
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, kind: i32, len_ptr: i32, flags_ptr: i32| -> i32 {
            guard!(c, "proxy_get_buffer_status");
            match buffer(c.data(), kind) {
                Err(s) => s.code(),
                Ok(None) => Status::NotFound.code(),
                Ok(Some(bytes)) => code(
                    write_u32(&mut c, len_ptr, bytes.len() as u32)
                        .and_then(|_| write_u32(&mut c, flags_ptr, 0)),
                ),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            guard!(c, "proxy_set_buffer_bytes");
            let data = match read(&mut c, ptr, len) {
                Ok(d) => d,
                Err(s) => return s.code(),
            };
            let state = c.data_mut();
            let context = state.effective_context;
            let Some(stream) = state.streams.get_mut(&context) else {
                return Status::NotFound.code();
            };
            let direction = match kind {
                buffer_type::HTTP_REQUEST_BODY => &mut stream.request,
                buffer_type::HTTP_RESPONSE_BODY => &mut stream.response,
                _ => return Status::NotFound.code(),
            };
            if !direction.body_visible {
                return Status::NotFound.code();
            }
            // Envoy's buffer copyFrom: start 0 drains `size` bytes then prepends; a start at or
            // past the end appends; anything else is not supported.
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            let body = &mut direction.body;
            if start == 0 {
                let drain = size.min(body.len());
                body.drain(..drain);
                body.splice(0..0, data);
            } else if start >= body.len() {
                body.extend(data);
            } else {
                return Status::BadArgument.code();
            }
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_header_map_pairs");
            let encoded = const_map(c.data(), map)
                .map(|h| h.encode())
                .unwrap_or_default();
            code(give(&mut c, &encoded, ptr_ptr, size_ptr))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr: i32, len: i32| -> i32 {
            guard!(c, "proxy_set_header_map_pairs");
            let bytes = match read(&mut c, ptr, len) {
                Ok(b) => b,
                Err(s) => return s.code(),
            };
            let Some(pairs) = Headers::decode(&bytes) else {
                return Status::BadArgument.code();
            };
            match mutable_map(c.data_mut(), map) {
                Some(target) => {
                    *target = pairs;
                    Status::Ok.code()
                }
                None => Status::BadArgument.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, map: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_header_map_size");
            let size = match mutable_map(c.data_mut(), map) {
                Some(h) => h
                    .pairs()
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>(),
                None => return Status::BadArgument.code(),
            };
            code(write_u32(&mut c, size_ptr, size as u32))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_header_map_value");
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return s.code(),
            };
            let state = c.data();
            let log_phase = state
                .streams
                .get(&state.effective_context)
                .map(|s| s.in_log_phase)
                .unwrap_or(false);
            let Some(headers) = const_map(state, map) else {
                return if log_phase {
                    Status::NotFound.code()
                } else {
                    Status::BadArgument.code()
                };
            };
            // Envoy returns only the first value of a repeated header.
            match headers.pairs().iter().find(|(k, _)| *k == key) {
                Some((_, value)) => {
                    let value = value.clone();
                    code(give(&mut c, &value, ptr_ptr, size_ptr))
                }
                None => Status::NotFound.code(),
            }
        },
    )?;
    fn mutate(
        c: &mut C<'_>,
        map: i32,
        kp: i32,
        kl: i32,
        vp: i32,
        vl: i32,
        op: fn(&mut Headers, &str, &[u8]),
    ) -> i32 {
        let key = match read_str(c, kp, kl) {
            Ok(k) => k,
            Err(s) => return s.code(),
        };
        let value = match read(c, vp, vl) {
            Ok(v) => v,
            Err(s) => return s.code(),
        };
        match mutable_map(c.data_mut(), map) {
            Some(headers) => {
                op(headers, &key, &value);
                Status::Ok.code()
            }
            None => Status::BadArgument.code(),
        }
    }
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_add_header_map_value");
            mutate(&mut c, map, kp, kl, vp, vl, |h, k, v| h.add(k, v))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_replace_header_map_value");
            mutate(&mut c, map, kp, kl, vp, vl, |h, k, v| h.replace(k, v))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32| -> i32 {
            guard!(c, "proxy_remove_header_map_value");
            mutate(&mut c, map, kp, kl, 0, 0, |h, k, _| h.remove(k))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_property");
            let raw = match read_str(&mut c, pp, pl) {
                Ok(p) => p,
                Err(s) => return s.code(),
            };
            let path: Vec<&str> = raw.split('\0').filter(|s| !s.is_empty()).collect();
            match property(c.data(), &path) {
                Some(value) => code(give(&mut c, &value, ptr_ptr, size_ptr)),
                None => Status::NotFound.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_set_property");
            let (path, value) = match (read_str(&mut c, pp, pl), read(&mut c, vp, vl)) {
                (Ok(p), Ok(v)) => (p, v),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let state = c.data_mut();
            let context = state.effective_context;
            // Properties live in the stream's filter state; the root context has none.
            match state.streams.get_mut(&context) {
                Some(stream) => {
                    let key: Vec<&str> = path.split('\0').filter(|s| !s.is_empty()).collect();
                    stream.properties.insert(key.join("\0"), value);
                    Status::Ok.code()
                }
                None => Status::NotFound.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| -> i32 {
            guard!(c, "proxy_get_shared_data");
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k,
                Err(s) => return s.code(),
            };
            let found = {
                let state = c.data();
                state
                    .world
                    .lock()
                    .shared_data
                    .get(&(state.options.vm_id.clone(), key))
                    .cloned()
            };
            match found {
                None => Status::NotFound.code(),
                Some(SharedValue { value, cas }) => code(
                    give(&mut c, &value, ptr_ptr, size_ptr)
                        .and_then(|_| write_u32(&mut c, cas_ptr, cas)),
                ),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
            guard!(c, "proxy_set_shared_data");
            let (key, value) = match (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let state = c.data();
            let id = (state.options.vm_id.clone(), key);
            let mut world = state.world.lock();
            let cas = cas as u32;
            if cas != 0 && world.shared_data.contains_key(&id) {
                if let Some(left) = world.interference.get_mut(&id).filter(|n| **n > 0) {
                    *left -= 1;
                    let bumped = world.next_cas();
                    if let Some(existing) = world.shared_data.get_mut(&id) {
                        existing.cas = bumped;
                    }
                }
                if world.shared_data.get(&id).map(|v| v.cas) != Some(cas) {
                    return Status::CasMismatch.code();
                }
            }
            let new_cas = world.next_cas();
            world.shared_data.insert(
                id,
                SharedValue {
                    value,
                    cas: new_cas,
                },
            );
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, token_ptr: i32| -> i32 {
            guard!(c, "proxy_register_shared_queue");
            let name = match read_str(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let token = {
                let state = c.data();
                let (index, root) = (state.index, state.root_context);
                let mut world = state.world.lock();
                let key = (state.options.vm_id.clone(), name);
                if let Some(queue) = world.queues.get_mut(&key) {
                    // Re-registration moves delivery to the newest registrant, as in cpp-host.
                    queue.owner_vm = index;
                    queue.owner_context = root;
                    queue.token
                } else {
                    let token = world.next_queue_token;
                    world.next_queue_token += 1;
                    world.queues.insert(
                        key,
                        Queue {
                            token,
                            items: Default::default(),
                            owner_vm: index,
                            owner_context: root,
                        },
                    );
                    token
                }
            };
            code(write_u32(&mut c, token_ptr, token))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, token_ptr: i32| -> i32 {
            guard!(c, "proxy_resolve_shared_queue");
            let (vm_id, name) = match (read_str(&mut c, vp, vl), read_str(&mut c, np, nl)) {
                (Ok(v), Ok(n)) => (v, n),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let vm_id = if vm_id.is_empty() {
                c.data().options.vm_id.clone()
            } else {
                vm_id
            };
            let token = c
                .data()
                .world
                .lock()
                .queues
                .get(&(vm_id, name))
                .map(|q| q.token);
            match token {
                Some(token) => code(write_u32(&mut c, token_ptr, token)),
                None => Status::NotFound.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, token: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_enqueue_shared_queue");
            let value = match read(&mut c, vp, vl) {
                Ok(v) => v,
                Err(s) => return s.code(),
            };
            let mut world = c.data().world.lock();
            let Some(queue) = world.queues.values_mut().find(|q| q.token == token as u32) else {
                return Status::NotFound.code();
            };
            queue.items.push_back(value);
            let posted = Posted::QueueReady {
                vm: queue.owner_vm,
                context_id: queue.owner_context,
                token: queue.token,
            };
            // Delivered later on the registrant's event loop, never inside this call.
            world.posted.push_back(posted);
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, token: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_dequeue_shared_queue");
            let item = {
                let mut world = c.data().world.lock();
                let Some(queue) = world.queues.values_mut().find(|q| q.token == token as u32)
                else {
                    return Status::NotFound.code();
                };
                queue.items.pop_front()
            };
            match item {
                Some(item) => code(give(&mut c, &item, ptr_ptr, size_ptr)),
                None => Status::Empty.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, kind: i32| -> i32 {
            guard!(c, "proxy_continue_stream");
            match kind {
                stream_type::REQUEST | stream_type::RESPONSE => {
                    let state = c.data_mut();
                    let context = state.effective_context;
                    if let Some(stream) = state.streams.get_mut(&context) {
                        // Envoy drops its pointers to the request maps at once; the resume itself
                        // runs after the VM call returns.
                        if let Some(h) = stream.request.headers.take() {
                            stream.request.last_headers = Some(h);
                        }
                        stream.request.body_visible = false;
                    }
                    state.deferred.push(Deferred::Continue {
                        context,
                        stream: kind,
                    });
                    Status::Ok.code()
                }
                2 => Status::Ok.code(),
                3 => Status::Unimplemented.code(),
                _ => Status::BadArgument.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, kind: i32| -> i32 {
            guard!(c, "proxy_close_stream");
            if !(0..=3).contains(&kind) {
                return Status::BadArgument.code();
            }
            let state = c.data_mut();
            let context = state.effective_context;
            state.deferred.push(Deferred::Close { context });
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> i32 {
            guard!(c, "proxy_send_local_response");
            let (details, body, headers) = match (
                read_str(&mut c, dp, dl),
                read(&mut c, bp, bl),
                read(&mut c, hp, hl),
            ) {
                (Ok(d), Ok(b), Ok(h)) => (d, b, h),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s.code(),
            };
            let Some(headers) = Headers::decode(&headers) else {
                return Status::BadArgument.code();
            };
            let state = c.data_mut();
            let context = state.effective_context;
            if state.streams.contains_key(&context) {
                let reply = LocalReply {
                    status: status as u32,
                    // Envoy replaces whitespace in details with underscores.
                    details: details
                        .chars()
                        .map(|ch| if ch.is_whitespace() { '_' } else { ch })
                        .collect(),
                    body,
                    headers,
                    grpc_status: (0..=16).contains(&grpc).then_some(grpc as u32),
                };
                state.deferred.push(Deferred::LocalReply { context, reply });
            }
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         token_ptr: i32|
         -> i32 {
            guard!(c, "proxy_http_call");
            if timeout < 0 {
                return Status::BadArgument.code();
            }
            let (upstream, headers, body, trailers) = match (
                read_str(&mut c, up, ul),
                read(&mut c, hp, hl),
                read(&mut c, bp, bl),
                read(&mut c, tp, tl),
            ) {
                (Ok(u), Ok(h), Ok(b), Ok(t)) => (u, h, b, t),
                (Err(s), ..) | (_, Err(s), ..) | (_, _, Err(s), _) | (.., Err(s)) => {
                    return s.code()
                }
            };
            let (Some(mut headers), Some(trailers)) =
                (Headers::decode(&headers), Headers::decode(&trailers))
            else {
                return Status::BadArgument.code();
            };
            if !c.data().world.lock().clusters.contains(&upstream) {
                return Status::BadArgument.code();
            }
            if !headers.contains(":path")
                || !headers.contains(":method")
                || !headers.contains(":authority")
            {
                return Status::BadArgument.code();
            }
            if !body.is_empty() {
                headers.replace("content-length", body.len().to_string());
            }
            let token = {
                let state = c.data_mut();
                let token = state.next_http_token;
                state.next_http_token += 1;
                let mut world = state.world.lock();
                let id = world.next_call_id;
                world.next_call_id += 1;
                let deadline = if timeout == 0 {
                    u64::MAX
                } else {
                    world.now_nanos + timeout as u64 * 1_000_000
                };
                world.http_calls.push(HttpCall {
                    id,
                    vm: state.index,
                    upstream,
                    headers,
                    body,
                    trailers,
                    timeout: std::time::Duration::from_millis(timeout as u64),
                    token,
                    context_id: state.effective_context,
                    deadline_nanos: deadline,
                });
                token
            };
            code(write_u32(&mut c, token_ptr, token))
        },
    )?;
    fn open_grpc(
        c: &mut C<'_>,
        service: Vec<u8>,
        service_name: String,
        method: String,
        metadata: Vec<u8>,
        message: Option<Vec<u8>>,
        token_ptr: i32,
    ) -> i32 {
        // Envoy accepts a serialized GrpcService or a cluster name; this host takes names.
        let cluster = String::from_utf8_lossy(&service).into_owned();
        if !c.data().world.lock().clusters.contains(&cluster) {
            return Status::ParseFailure.code();
        }
        let Some(initial_metadata) = Headers::decode(&metadata) else {
            return Status::BadArgument.code();
        };
        let state = c.data_mut();
        let token = state.next_grpc_token;
        state.next_grpc_token += 1;
        let mut world = state.world.lock();
        let id = world.next_call_id;
        world.next_call_id += 1;
        world.grpc_calls.push(GrpcCall {
            id,
            vm: state.index,
            service,
            service_name,
            method,
            initial_metadata,
            is_stream: message.is_none(),
            messages: message.into_iter().collect(),
            closed_by_module: false,
            cancelled: false,
            token,
            context_id: state.effective_context,
        });
        drop(world);
        code(write_u32(c, token_ptr, token))
    }
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
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
         _timeout: i32,
         token_ptr: i32|
         -> i32 {
            guard!(c, "proxy_grpc_call");
            let parts = (
                read(&mut c, sp, sl),
                read_str(&mut c, np, nl),
                read_str(&mut c, mp, ml),
                read(&mut c, ip, il),
                read(&mut c, msgp, msgl),
            );
            match parts {
                (Ok(s), Ok(n), Ok(m), Ok(i), Ok(msg)) => {
                    open_grpc(&mut c, s, n, m, i, Some(msg), token_ptr)
                }
                _ => Status::InvalidMemoryAccess.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C<'_>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         token_ptr: i32|
         -> i32 {
            guard!(c, "proxy_grpc_stream");
            let parts = (
                read(&mut c, sp, sl),
                read_str(&mut c, np, nl),
                read_str(&mut c, mp, ml),
                read(&mut c, ip, il),
            );
            match parts {
                (Ok(s), Ok(n), Ok(m), Ok(i)) => open_grpc(&mut c, s, n, m, i, None, token_ptr),
                _ => Status::InvalidMemoryAccess.code(),
            }
        },
    )?;
    fn with_grpc(
        c: &mut C<'_>,
        token: i32,
        unknown: Status,
        f: impl FnOnce(&mut GrpcCall) -> bool,
    ) -> i32 {
        let state = c.data();
        let index = state.index;
        let mut world = state.world.lock();
        let Some(position) = world
            .grpc_calls
            .iter()
            .position(|g| g.vm == index && g.token == token as u32)
        else {
            return unknown.code();
        };
        if f(&mut world.grpc_calls[position]) {
            world.grpc_calls.remove(position);
        }
        Status::Ok.code()
    }
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: C<'_>, token: i32, mp: i32, ml: i32, end: i32| -> i32 {
            guard!(c, "proxy_grpc_send");
            let message = match read(&mut c, mp, ml) {
                Ok(m) => m,
                Err(s) => return s.code(),
            };
            with_grpc(&mut c, token, Status::BadArgument, |g| {
                g.messages.push(message);
                g.closed_by_module |= end != 0;
                false
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut c: C<'_>, token: i32| -> i32 {
            guard!(c, "proxy_grpc_cancel");
            with_grpc(&mut c, token, Status::NotFound, |g| {
                g.cancelled = true;
                true
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut c: C<'_>, token: i32| -> i32 {
            guard!(c, "proxy_grpc_close");
            with_grpc(&mut c, token, Status::NotFound, |g| {
                g.closed_by_module = true;
                false
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_status");
            let (status, message) = c.data().status.clone();
            code(
                write_u32(&mut c, code_ptr, status)
                    .and_then(|_| give(&mut c, &message, ptr_ptr, size_ptr)),
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, context: i32| -> i32 {
            guard!(c, "proxy_set_effective_context");
            let state = c.data_mut();
            let context = context as u32;
            if context == state.root_context || state.streams.contains_key(&context) {
                state.effective_context = context;
                Status::Ok.code()
            } else {
                Status::BadArgument.code()
            }
        },
    )?;
    l.func_wrap("env", "proxy_done", |mut c: C<'_>| -> i32 {
        guard!(c, "proxy_done");
        c.data_mut().done_called = true;
        Status::Ok.code()
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, ap: i32, al: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_call_foreign_function");
            let (name, args) = match (read_str(&mut c, np, nl), read(&mut c, ap, al)) {
                (Ok(n), Ok(a)) => (n, a),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let function = c.data().world.lock().foreign_functions.get(&name).cloned();
            match function.map(|f| f(&args)) {
                None => Status::NotFound.code(),
                Some(Err(s)) => s.code(),
                Some(Ok(result)) => code(give(&mut c, &result, ptr_ptr, size_ptr)),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, id_ptr: i32| -> i32 {
            guard!(c, "proxy_define_metric");
            let Some(kind) = MetricKind::from_raw(kind) else {
                return Status::BadArgument.code();
            };
            let name = match read_str(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let id = {
                let state = c.data_mut();
                state
                    .world
                    .lock()
                    .metrics
                    .entry(name.clone())
                    .or_insert(MetricState {
                        kind,
                        value: 0,
                        samples: Vec::new(),
                    });
                // Envoy keeps the metric type in the id's low two bits.
                let type_bits = match kind {
                    MetricKind::Counter => 0,
                    MetricKind::Gauge => 1,
                    MetricKind::Histogram => 2,
                };
                let id = (state.next_metric_id << 2) | type_bits;
                state.next_metric_id += 1;
                state.metric_ids.insert(id, (kind, name));
                id
            };
            code(write_u32(&mut c, id_ptr, id))
        },
    )?;
    /// Runs `f` on a defined metric. Unknown ids: `NotFound`, or `BadArgument` when the id's
    /// type bits name no metric type (Envoy decodes the type from the id first).
    fn with_metric(
        c: &mut C<'_>,
        id: i32,
        f: impl FnOnce(MetricKind, &mut MetricState) -> Status,
    ) -> i32 {
        let state = c.data();
        let Some((kind, name)) = state.metric_ids.get(&(id as u32)).cloned() else {
            return if id & 3 == 3 {
                Status::BadArgument.code()
            } else {
                Status::NotFound.code()
            };
        };
        let mut world = state.world.lock();
        match world.metrics.get_mut(&name) {
            Some(metric) => f(kind, metric).code(),
            None => Status::NotFound.code(),
        }
    }
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, offset: i64| -> i32 {
            guard!(c, "proxy_increment_metric");
            with_metric(&mut c, id, |kind, m| match kind {
                MetricKind::Counter if offset > 0 => {
                    m.value += offset;
                    Status::Ok
                }
                MetricKind::Counter => Status::BadArgument,
                MetricKind::Gauge => {
                    m.value = m.value.saturating_add(offset).max(0);
                    Status::Ok
                }
                MetricKind::Histogram => Status::BadArgument,
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C<'_>, id: i32, value: i64| -> i32 {
            guard!(c, "proxy_record_metric");
            with_metric(&mut c, id, |kind, m| {
                match kind {
                    MetricKind::Counter => m.value += value,
                    MetricKind::Gauge => m.value = value,
                    MetricKind::Histogram => m.samples.push(value as u64),
                }
                Status::Ok
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, result_ptr: i32| -> i32 {
            guard!(c, "proxy_get_metric");
            let mut value = None;
            let status = with_metric(&mut c, id, |kind, m| {
                if kind == MetricKind::Histogram {
                    return Status::BadArgument;
                }
                value = Some(m.value as u64);
                Status::Ok
            });
            match value {
                Some(v) => code(write(&mut c, result_ptr, &v.to_le_bytes())),
                None => status,
            }
        },
    )?;
    l.func_wrap("env", "pthread_equal", |a: i32, b: i32| -> i32 {
        (a == b) as i32
    })?;
    l.func_wrap("env", "emscripten_notify_memory_growth", |_: i32| {})?;
    Ok(())
}

/// Appends WASI stdout/stderr output, logging each complete line (Envoy logs stdout at
/// info and stderr at error).
fn write_stdio(c: &mut C<'_>, fd: i32, bytes: &[u8]) {
    let level = if fd == 1 {
        LogLevel::Info
    } else {
        LogLevel::Error
    };
    for line in String::from_utf8_lossy(bytes).split_inclusive('\n') {
        let line = line.trim_end_matches('\n');
        if !line.is_empty() {
            c.data().log(level, line.to_string());
        }
    }
}

fn define_wasi(l: &mut Linker<VmState>, m: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return errno::BADF;
            }
            let mut total = Vec::new();
            for i in 0..iovs_len {
                let Ok(iov) = read(&mut c, iovs + i * 8, 8) else {
                    return errno::INVAL;
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&mut c, ptr, len) {
                    Ok(bytes) => total.extend(bytes),
                    Err(_) => return errno::INVAL,
                }
            }
            write_stdio(&mut c, fd, &total);
            match write_u32(&mut c, nwritten, total.len() as u32) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(m, "fd_read", |_: i32, _: i32, _: i32, _: i32| -> i32 {
        errno::NOSYS
    })?;
    l.func_wrap(m, "fd_seek", |_: i32, _: i64, _: i32, _: i32| -> i32 {
        errno::NOSYS
    })?;
    l.func_wrap(m, "fd_close", |_: i32| -> i32 { errno::NOSYS })?;
    l.func_wrap(
        m,
        "fd_fdstat_get",
        |mut c: C<'_>, fd: i32, stat: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return errno::BADF;
            }
            // fdstat: filetype u8 (2 = character device), flags u16, rights u64 × 2.
            let mut buf = [0u8; 24];
            buf[0] = 2;
            match write(&mut c, stat, &buf) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(
        m,
        "environ_sizes_get",
        |mut c: C<'_>, count_ptr: i32, size_ptr: i32| -> i32 {
            let env = c.data().options.environment.clone();
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            match write_u32(&mut c, count_ptr, env.len() as u32)
                .and_then(|_| write_u32(&mut c, size_ptr, size as u32))
            {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(
        m,
        "environ_get",
        |mut c: C<'_>, environ: i32, buf: i32| -> i32 {
            let env = c.data().options.environment.clone();
            let mut at = buf;
            for (i, (k, v)) in env.iter().enumerate() {
                let entry = format!("{k}={v}\0");
                if write_u32(&mut c, environ + i as i32 * 4, at as u32).is_err()
                    || write(&mut c, at, entry.as_bytes()).is_err()
                {
                    return errno::INVAL;
                }
                at += entry.len() as i32;
            }
            errno::SUCCESS
        },
    )?;
    l.func_wrap(
        m,
        "args_sizes_get",
        |mut c: C<'_>, count_ptr: i32, size_ptr: i32| -> i32 {
            match write_u32(&mut c, count_ptr, 0).and_then(|_| write_u32(&mut c, size_ptr, 0)) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(m, "args_get", |_: i32, _: i32| -> i32 { errno::SUCCESS })?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: C<'_>, clock: i32, _precision: i64, time_ptr: i32| -> i32 {
            let (now, base) = {
                let world = c.data().world.lock();
                (world.now_nanos, world.monotonic_base)
            };
            let value = match clock {
                0 => now,
                1 => now - base,
                _ => return 58, // ENOTSUP
            };
            match write(&mut c, time_ptr, &value.to_le_bytes()) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(m, "random_get", |mut c: C<'_>, buf: i32, len: i32| -> i32 {
        let mut bytes = Vec::with_capacity(len as usize);
        {
            let mut world = c.data().world.lock();
            while bytes.len() < len as usize {
                bytes.extend(world.random_u64().to_le_bytes());
            }
        }
        bytes.truncate(len as usize);
        match write(&mut c, buf, &bytes) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::INVAL,
        }
    })?;
    l.func_wrap(m, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!(
            "module called proc_exit({code})"
        )))
    })?;
    l.func_wrap(
        m,
        "path_open",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| -> i32 {
            errno::NOTCAPABLE
        },
    )?;
    l.func_wrap(m, "fd_prestat_get", |_: i32, _: i32| -> i32 { errno::BADF })?;
    l.func_wrap(m, "fd_prestat_dir_name", |_: i32, _: i32, _: i32| -> i32 {
        errno::BADF
    })?;
    Ok(())
}
