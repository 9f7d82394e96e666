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

// The host functions by ABI area (declared after `guard!`, which they use).
mod buffers;
mod emscripten;
mod grpc;
mod http_call;
mod maps;
mod metrics;
mod properties;
mod queues;
mod shared_data;
mod stream;
mod time_log;
mod wasi;

use wasi::define_wasi;

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
    time_log::define(l)?;
    buffers::define(l)?;
    maps::define(l)?;
    properties::define(l)?;
    shared_data::define(l)?;
    queues::define(l)?;
    stream::define(l)?;
    http_call::define(l)?;
    grpc::define(l)?;
    metrics::define(l)?;
    emscripten::define(l)?;
    Ok(())
}
