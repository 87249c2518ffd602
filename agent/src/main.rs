//! `flotilla-agent --config /etc/flotilla/agent.toml`

fn main() {
    flotilla_agent::cli::main()
}
