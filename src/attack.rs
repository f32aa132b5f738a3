pub fn run(_: &crate::commands::Context, _: &crate::cli::AttackArgs) -> crate::Result<()> { Err(crate::TlError::invalid("tl attack is not built yet")) }
