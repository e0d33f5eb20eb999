//! `ferry access …`: who may call the control plane. Grants issue a token (written to a
//! credential file of mode 0600 for its holder) and add its hash and role to an access file;
//! revocations remove it. Servers re-read the access file when it changes, so both apply at once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ferry_auth::{AccessError, AccessList, Role, Token};

#[derive(Debug, Args)]
pub(crate) struct AccessFileArgs {
    /// The access file (token hashes and roles) the nodes and the topology service read.
    #[arg(long, value_name = "FILE", default_value = "ferry-data/access.toml")]
    access: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AccessCommand {
    /// Issue a token named NAME with a role; write it to a credential file (mode 0600) and
    /// its hash to the access file. A token of the same name is replaced.
    Grant {
        name: String,
        /// read-only, operator or admin.
        #[arg(long)]
        role: Role,
        /// Where the new token goes. Default: ./<name>.token.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        file: AccessFileArgs,
    },
    /// Stop accepting the token named NAME.
    Revoke {
        name: String,
        #[command(flatten)]
        file: AccessFileArgs,
    },
    /// List who may call, with their roles.
    List {
        #[command(flatten)]
        file: AccessFileArgs,
    },
}

pub(crate) fn run(command: AccessCommand) -> anyhow::Result<ExitCode> {
    match command {
        AccessCommand::Grant { name, role, out, file } => {
            let token = Token::issue(&name)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.token")));
            AccessList::update(&file.access, |list| {
                ferry_auth::access::write_credential(&out, &token)?;
                list.grant(&token, role);
                Ok(())
            })?;
            say!("granted {role} to '{name}': token in {} (mode 0600)", out.display());
            Ok(ExitCode::SUCCESS)
        }
        AccessCommand::Revoke { name, file } => {
            let path = file.access.clone();
            AccessList::update(&file.access, |list| {
                if list.revoke(&name) {
                    Ok(())
                } else {
                    Err(AccessError::NoSuchToken { path, name: name.clone() })
                }
            })?;
            say!("revoked '{name}'");
            Ok(ExitCode::SUCCESS)
        }
        AccessCommand::List { file } => {
            let list = AccessList::load(&file.access)?;
            say!("{:<32} role", "name");
            for entry in list.entries() {
                say!("{:<32} {}", entry.name, entry.role);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
