//! The `sesame` binary as users run it: relay, expose and connect as separate processes,
//! reached by real clients (curl) and serving a real server (python3's http.server).

mod bad_input;
mod conventions;
mod end_to_end;
mod endpoints;
mod lifecycle;
mod security;
mod util;
