//! `broker`: one Kafka-compatible broker process.

use std::sync::Arc;

use broker::broker::Broker;
use broker::config::{Args, BrokerConfig, LogFormat};
use broker::metrics::{self, Metrics};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    let config = match BrokerConfig::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("broker: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "broker stopped");
            eprintln!("broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let kafka = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (listen): {e}", config.listen))?;
    let internal = match &config.internal {
        None => None,
        Some((addr, _)) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (internal-listen): {e}"))?,
        ),
    };
    let metrics_listener = metrics::bind(config.metrics_listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (metrics-listen): {e}",
            config.metrics_listen
        )
    })?;
    tracing::info!(data_dir = %config.data_dir.display(), "opening data directory");
    let broker = Broker::open(config.clone(), Arc::clone(&metrics)).await?;
    broker::group::offsets_topic::start(&broker);
    tracing::info!(
        listen = %config.listen,
        advertised = %format!("{}:{}", config.advertised_host, config.advertised_port),
        metrics = %config.metrics_listen,
        node_id = config.node_id,
        seeds = config.seeds.len(),
        topics = broker.topics().len(),
        "broker ready"
    );
    tokio::spawn(metrics::serve(metrics_listener, metrics));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(broker::server::serve(
        kafka,
        broker::broker::EXTERNAL,
        Arc::clone(&broker),
        stop_rx.clone(),
    ));
    if let Some(listener) = internal {
        tokio::spawn(broker::server::serve(
            listener,
            broker::broker::INTERNAL,
            Arc::clone(&broker),
            stop_rx,
        ));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        // Stop at once: this broker must not number anything for a cluster that refused it.
        why = broker.cluster.refused() => {
            return Err(anyhow::anyhow!("the cluster refused this broker: {why}"));
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    broker.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}
