use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use dlpx::cli::commands::{self, Ctx};
use dlpx::cli::{Cli, Command};

fn run(cli: Cli) -> color_eyre::Result<()> {
    let mut ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Some(Command::Eval(a)) => commands::eval(&mut ctx, &a),
        Some(Command::Generate(a)) => commands::generate_cmd(&mut ctx, &a),
        Some(Command::ExportModel(a)) => commands::export_model(&mut ctx, &a),
        Some(Command::Demo(a)) => commands::demo(&mut ctx, &a),
        Some(Command::FetchDemo) => commands::fetch_demo(&mut ctx),
        Some(Command::Bench(a)) => dlpx::cli::bench::run(&mut ctx, &a, cli.global.sparse.is_some()),
        Some(Command::Prune(a)) => dlpx::cli::prune_cmd::run(&mut ctx, &a),
        Some(Command::Estimate(a)) => commands::estimate(&ctx, &a),
        Some(Command::Tokenize(a)) => commands::tokenize(&mut ctx, &a),
        Some(Command::Compare(a)) => commands::compare(&a),
        Some(Command::Zeroshot(a)) => commands::zeroshot(&mut ctx, &a),
        Some(Command::Sweep(a)) => dlpx::cli::sweep_cmd::run(&mut ctx, &a),
        Some(Command::Recover(a)) => dlpx::cli::recover_cmd::run(&mut ctx, &a),
        Some(Command::Table(a)) => dlpx::cli::study_cmd::table(&a),
        Some(Command::Plot(a)) => dlpx::cli::study_cmd::plot(&a),
        Some(Command::Schema) => {
            print!("{}", dlpx::report::json_schema()?);
            Ok(())
        }
        None => dlpx::cli::tui::start(&cli.global, &cli.tui),
    }
}

/// An explorer option (`dlpx --calib …`) given together with a subcommand, which would ignore it.
/// Options every command takes (`--device`, `--offload`, …) may stand before or after it.
fn misplaced_explorer_option(m: &ArgMatches) -> Option<String> {
    m.subcommand_name()?;
    Cli::command()
        .get_arguments()
        .filter(|a| !a.is_global_set())
        .find(|a| m.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .map(|a| a.get_long().unwrap_or(a.get_id().as_str()).to_string())
}

fn main() {
    let matches = Cli::command().get_matches();
    if let Some(arg) = misplaced_explorer_option(&matches) {
        let sub = matches.subcommand_name().unwrap_or_default();
        eprintln!(
            "error: `--{arg}` before `{sub}` belongs to the explorer (`dlpx` without a subcommand); \
             write it after `{sub}` if `dlpx {sub} --help` lists it"
        );
        std::process::exit(2);
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = run(cli) {
        // One readable message: the error and its causes on one line, no backtrace.
        let chain: Vec<String> = e.chain().map(dlpx::cli::flag_message).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
