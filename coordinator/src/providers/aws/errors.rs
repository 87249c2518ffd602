//! What went wrong talking to EC2, said so an operator can fix it: bad credentials, a missing
//! IAM permission (named), an unknown AMI, no capacity, an endpoint that does not answer.
//! The SDK has already retried throttling and 5xx answers with back-off by the time an
//! error gets here.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(
        "AWS refused the credentials ({code}: {message}). Check AWS_PROFILE / AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY (or `aws sso login` for an SSO profile); `aws sts get-caller-identity` \
         shows which identity is used. Nothing was created."
    )]
    Credentials { code: String, message: String },
    #[error(
        "no AWS credentials were found ({0}). Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
         log in with `aws sso login`, or run on an instance with a role. Nothing was created."
    )]
    NoCredentials(String),
    #[error(
        "the IAM identity may not call {action} ({message}). Grant it: `coordinator iam-policy` prints \
         the minimal policy Flotilla needs."
    )]
    Permission { action: String, message: String },
    #[error("no AWS region: set `aws.region` in flotilla.toml, pass --region, or set AWS_REGION")]
    NoRegion,
    #[error(
        "AMI {ami} does not exist in region {region} or is not visible to this account ({message}); check `images.host`"
    )]
    UnknownAmi { ami: String, region: String, message: String },
    #[error(
        "instance type {instance_type} runs on {arch}, but the Amazon Linux 2023 AMI Flotilla uses is x86_64: \
         choose an x86_64 type (t3, m6i, c6i, …) in `instance_types`"
    )]
    Architecture { instance_type: String, arch: String },
    #[error("instance type {0} is unknown to EC2 in this region; check `instance_types`")]
    UnknownInstanceType(String),
    #[error("no capacity for {instance_type} in any of the subnets tried ({tried}): {message}")]
    Capacity { instance_type: String, tried: String, message: String },
    #[error(
        "cannot reach the EC2 API at {endpoint} ({detail}); check the network, `aws.endpoint_url` or --endpoint-url"
    )]
    Unreachable { endpoint: String, detail: String },
    #[error("{what}: {detail}")]
    Setup { what: String, detail: String },
    #[error("{action}: {code}: {message}")]
    Api { action: String, code: String, message: String },
    #[error("timed out after {after_s} s waiting for {what}")]
    Timeout { what: String, after_s: u64 },
    #[error(
        "{host} must launch on {ip}, which none of the cluster's subnets holds ({subnets}); list the subnet that does in `aws.subnet_ids`"
    )]
    AddressOutside { host: String, ip: std::net::Ipv4Addr, subnets: String },
    #[error(
        "{host} must launch on {ip}, and EC2 says the address is in use ({message}): find what holds it (`aws ec2 describe-network-interfaces --filters Name=addresses.private-ip-address,Values={ip}`), free it, and run the command again"
    )]
    AddressTaken { host: String, ip: String, message: String },
    #[error("no host named '{0}' in this cluster on EC2")]
    NoHost(String),
    #[error("{0}")]
    State(String),
    /// A failpoint's injected error (a `failpoints` build under test: [`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

/// Error codes for which another subnet (another availability zone) may succeed.
pub const CAPACITY_CODES: [&str; 3] =
    ["InsufficientInstanceCapacity", "Unsupported", "InsufficientFreeAddressesInSubnet"];

impl AwsError {
    /// Turns an SDK error from `action` (the IAM action name, e.g. `ec2:RunInstances`) into
    /// a message an operator can act on.
    pub fn from_sdk<E, R>(action: &str, endpoint: &str, e: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let rendered = DisplayErrorContext(&e).to_string();
        match &e {
            SdkError::ServiceError(se) => {
                let err = se.err();
                let code = err.code().unwrap_or("Unknown").to_string();
                let message = err.message().unwrap_or_default().to_string();
                classify(action, &code, &message)
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
                if looks_like_missing_credentials(&rendered) {
                    return AwsError::NoCredentials(first_line(&rendered));
                }
                AwsError::Unreachable { endpoint: endpoint.to_string(), detail: first_line(&rendered) }
            }
            _ => {
                if looks_like_missing_credentials(&rendered) {
                    return AwsError::NoCredentials(first_line(&rendered));
                }
                AwsError::Api { action: action.to_string(), code: "Client".into(), message: rendered }
            }
        }
    }

    /// The EC2 error code, when EC2 answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } | AwsError::Credentials { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The classification of an EC2 error code (pure; unit-tested).
pub fn classify(action: &str, code: &str, message: &str) -> AwsError {
    match code {
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "ExpiredToken"
        | "RequestExpired"
        | "InvalidAccessKeyId" => AwsError::Credentials { code: code.to_string(), message: message.to_string() },
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => {
            AwsError::Permission { action: action.to_string(), message: short(message) }
        }
        _ => AwsError::Api { action: action.to_string(), code: code.to_string(), message: message.to_string() },
    }
}

fn looks_like_missing_credentials(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s.contains("no credentials")
        || s.contains("loading credentials")
        || s.contains("failed to load credentials")
        || s.contains("credentials provider")
}

/// The readable head of an SDK error chain (without the Debug dump the SDK appends).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    let line = line.split(" (DispatchFailure(").next().unwrap_or(line);
    line.chars().take(400).collect()
}

/// EC2's UnauthorizedOperation messages carry a long encoded authorization message; keep
/// the readable part.
fn short(m: &str) -> String {
    match m.find(" Encoded authorization failure message") {
        Some(i) => m[..i].to_string(),
        None => m.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_permissions_and_the_rest_are_told_apart() {
        assert!(matches!(classify("ec2:DescribeVpcs", "AuthFailure", "x"), AwsError::Credentials { .. }));
        assert!(matches!(classify("ec2:DescribeVpcs", "InvalidClientTokenId", "x"), AwsError::Credentials { .. }));
        let e = classify(
            "ec2:RunInstances",
            "UnauthorizedOperation",
            "You are not authorized to perform this operation. Encoded authorization failure message: AAAA",
        );
        let m = e.to_string();
        assert!(m.contains("ec2:RunInstances") && m.contains("coordinator iam-policy") && !m.contains("AAAA"), "{m}");
        let e = classify("ec2:RunInstances", "InsufficientInstanceCapacity", "none left");
        assert_eq!(e.code(), Some("InsufficientInstanceCapacity"));
    }
}
