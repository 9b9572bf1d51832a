//! `arbiter-supervisor`: parse settings, pick the GPU inventory, serve; or run an operator
//! command against a running supervisor.

use std::process::ExitCode;
use std::sync::Arc;

use arbiter_supervisor::cli::{Cli, Command};
use arbiter_supervisor::config::Config;
use arbiter_supervisor::gpu::Inventory;
use arbiter_supervisor::gpu::nvml::NvmlInventory;
use arbiter_supervisor::gpu::simulated::SimulatedInventory;
use arbiter_supervisor::{client, logging, server};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(error),
    };
    cli.overrides.apply(&mut config);
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            logging::init(&config.log);
            serve(config).await
        }
        Command::CheckConfig => match config.validate() {
            Ok(()) => {
                print!("{}{}", config.to_toml(), config.describe_paths());
                Ok(())
            }
            Err(error) => Err(error.into()),
        },
        Command::Status(args) => client::status(&args, &config).await,
        Command::Leases(args) => client::leases(&args, &config).await,
        Command::Events {
            client: args,
            samples,
            record,
        } => client::events(&args, &config, samples, record.as_deref()).await,
        Command::Hold(args) => client::hold(&args, &config).await,
        // Exits with the command's status, not 0 or 2.
        Command::Run(args) => return client::run::run(&args, &config).await,
        Command::Generate(args) => client::jobs::generate(&args, &config).await,
        Command::Jobs(args) => client::jobs::list(&args, &config).await,
        Command::Token { name, file } => client::token::run(&name, file.as_deref()),
        Command::Release {
            client: args,
            lease_id,
        } => client::release(&args, &config, &lease_id).await,
        Command::Cancel {
            client: args,
            job_id,
        } => client::jobs::cancel(&args, &config, &job_id).await,
        Command::Plot(args) => client::plot::run(&args).map_err(Into::into),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

async fn serve(config: Config) -> Result<(), client::ClientError> {
    let inventory: Arc<dyn Inventory> = if config.gpu.simulated.is_empty() {
        Arc::new(NvmlInventory::open()?)
    } else {
        let capacities: Vec<u64> = config.gpu.simulated.iter().map(|b| b.0).collect();
        Arc::new(SimulatedInventory::new(
            &capacities,
            &config.simulated_dir(),
        )?)
    };
    server::run(config, inventory, server::signals()).await?;
    Ok(())
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("arbiter-supervisor: {error}");
    ExitCode::from(2)
}
