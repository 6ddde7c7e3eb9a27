//! `phalanx-worker`: the runtime of the prefill/decode worker images.
//!
//! At start it reads who it is and what placement it asked for ([`identity`], the
//! Downward API) and what devices it got ([`devices`], the env phalanx-dra-driver's CDI
//! specs inject), checks one against the other ([`verify`]), and then either configures
//! and execs a real engine ([`engine`]: vLLM, SGLang, Dynamo/TensorRT-LLM) or serves the
//! built-in reference engine ([`model`], [`server`]) with a real KV handoff from prefill to
//! decode ([`kv`], [`transfer`]).

pub mod devices;
pub mod engine;
pub mod identity;
pub mod kv;
pub mod model;
pub mod server;
pub mod transfer;
pub mod verify;
