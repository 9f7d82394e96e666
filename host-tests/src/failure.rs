//! Why a VM call failed: a load error, a trap (with backtrace and the module's own last
//! words), a rejected start or configuration, or a misuse of the emulator by the test.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The module could not be loaded or linked, as Envoy would refuse it.
    Load,
    /// The module trapped (a Rust panic is an `unreachable` trap after the panic is logged).
    Trap,
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false: Envoy rejects the config.
    Rejected,
    /// The VM failed earlier; Envoy answers the stream with 503 `wasm_fail_stream`.
    VmFailed,
    /// The test asked for something that cannot happen (answering an unknown callout...).
    Usage,
}

#[derive(Clone, Debug)]
pub struct VmFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl VmFailure {
    pub(crate) fn load(message: String) -> VmFailure {
        VmFailure {
            kind: FailureKind::Load,
            message,
        }
    }
    pub(crate) fn usage(message: String) -> VmFailure {
        VmFailure {
            kind: FailureKind::Usage,
            message,
        }
    }
}

impl fmt::Display for VmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for VmFailure {}
