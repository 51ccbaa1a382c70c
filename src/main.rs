use clap::Parser;

use dlpx::cli::{Cli, Command};
use dlpx::commands::{self, Ctx};

fn run(cli: Cli) -> color_eyre::Result<()> {
    let mut ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Some(Command::Eval(a)) => commands::eval(&mut ctx, &a),
        Some(Command::Generate(a)) => commands::generate_cmd(&mut ctx, &a),
        Some(Command::ExportModel(a)) => commands::export_model(&mut ctx, &a),
        Some(Command::Demo(a)) => commands::demo(&mut ctx, &a),
        Some(Command::FetchDemo) => commands::fetch_demo(&mut ctx),
        Some(Command::Bench(a)) => dlpx::bench::run(&mut ctx, &a),
        Some(Command::Prune(a)) => dlpx::prune_cmd::run(&mut ctx, &a),
        Some(Command::Estimate(a)) => commands::estimate(&ctx, &a),
        Some(Command::Schema) => {
            print!("{}", dlpx::report::json_schema());
            Ok(())
        }
        None => dlpx::tui::start(&cli.global, &cli.tui),
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One readable message: the error and its causes on one line, no backtrace.
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
