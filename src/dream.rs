pub fn run(_: &crate::commands::Context, _: &crate::cli::DreamArgs) -> crate::Result<()> { Err(crate::TlError::invalid("tl dream is not built yet")) }
