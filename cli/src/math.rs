//! `pow`, defined here so that the executable loads no C math library.
//!
//! The one function of the C math library (libm) the executable calls is `pow`: indicatif
//! weighs its rate estimates with `f64::powf`. Loading libm costs every `sesame` process about
//! half a MiB of resident memory, since the dynamic loader resolves its relocations and picks
//! its CPU-specific variants, touching pages throughout it, all for that one function.
//! Defining `pow` in the executable, with the `libm` crate's implementation (musl's, in Rust),
//! binds those calls here, and the linker leaves libm out (it links with `--as-needed`).

/// C's `pow`: `x` raised to the power `y`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // a C symbol, so that the linker binds calls to `pow` here
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::pow;

    #[test]
    fn pow_gives_cs_results() {
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(10.0, -2.0), 0.01);
        assert_eq!(pow(9.0, 0.5), 3.0);
        assert_eq!(pow(0.0, 0.0), 1.0);
        assert!(pow(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(pow(f64::INFINITY, -1.0), 0.0);
        // indicatif's weight for a sample 15 s old: a tenth.
        assert!((pow(0.1, 15.0 / 15.0) - 0.1).abs() < 1e-17);
        // What the standard library's `powf` calls is this function.
        assert_eq!(1.5f64.powf(std::hint::black_box(2.0)), 2.25);
    }
}
