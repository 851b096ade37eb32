use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire (and database) spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?} (expected one of: {})"),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum!(
    /// The language or packaging of a workload's payload.
    Runtime, "runtime" {
        /// JavaScript (an ES module or a script), run by the isolate backend or under runsc.
        Node => "node",
        /// A WebAssembly (WASI preview 1) module.
        Wasm => "wasm",
        /// A Python program (`main.py`).
        Python => "python",
        /// A Go program (`main.go`).
        Go => "go",
        /// An OCI image.
        Oci => "oci",
    }
);

text_enum!(
    /// An isolation class: the technology that separates a workload from the host.
    /// Never `auto`: that is resolved at submission (see [`IsolationRequest`]).
    Isolation, "isolation" {
        /// In-process engines with a fresh heap per workload (QuickJS, wasmtime).
        Isolate => "isolate",
        /// OCI containers under gVisor's `runsc`.
        Gvisor => "gvisor",
        /// A KVM micro-VM per workload.
        Microvm => "microvm",
    }
);

text_enum!(
    /// The isolation a client asked for: a class, or `auto` (resolved by the supervisor).
    IsolationRequest, "isolation" {
        /// Let the supervisor pick along the fallback chain.
        Auto => "auto",
        /// Exactly the isolate class.
        Isolate => "isolate",
        /// Exactly the gvisor class.
        Gvisor => "gvisor",
        /// Exactly the microvm class.
        Microvm => "microvm",
    }
);

impl IsolationRequest {
    /// The explicit class, or `None` for `auto`.
    pub fn explicit(self) -> Option<Isolation> {
        match self {
            IsolationRequest::Auto => None,
            IsolationRequest::Isolate => Some(Isolation::Isolate),
            IsolationRequest::Gvisor => Some(Isolation::Gvisor),
            IsolationRequest::Microvm => Some(Isolation::Microvm),
        }
    }
}

impl Runtime {
    /// The auto-routing table: the classes `auto` tries for this runtime, preferred first.
    /// This is the one place the fallback chain is written down.
    pub fn auto_chain(self) -> &'static [Isolation] {
        match self {
            Runtime::Node | Runtime::Wasm => &[Isolation::Isolate],
            Runtime::Python | Runtime::Go => &[Isolation::Microvm, Isolation::Gvisor],
            Runtime::Oci => &[Isolation::Gvisor],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for r in Runtime::ALL {
            assert_eq!(r.as_str().parse::<Runtime>(), Ok(*r));
        }
        for i in Isolation::ALL {
            assert_eq!(i.as_str().parse::<Isolation>(), Ok(*i));
        }
        assert!("auto".parse::<Isolation>().is_err());
        assert!("NODE".parse::<Runtime>().is_err());
    }

    #[test]
    fn auto_chain_matches_the_spec_table() {
        assert_eq!(Runtime::Node.auto_chain(), &[Isolation::Isolate]);
        assert_eq!(Runtime::Wasm.auto_chain(), &[Isolation::Isolate]);
        assert_eq!(
            Runtime::Python.auto_chain(),
            &[Isolation::Microvm, Isolation::Gvisor]
        );
        assert_eq!(
            Runtime::Go.auto_chain(),
            &[Isolation::Microvm, Isolation::Gvisor]
        );
        assert_eq!(Runtime::Oci.auto_chain(), &[Isolation::Gvisor]);
    }
}
