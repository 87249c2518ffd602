//! The image hosts boot from: Amazon Linux 2023 (x86_64) from its public SSM parameter, or
//! the AMI `images.host` names (a baked one), checked to exist and to be x86_64; and the
//! instance types, checked to be x86_64 types EC2 knows, before anything is launched.

use aws_sdk_ec2::types::{ArchitectureType, InstanceType};

use super::{Aws, AwsError};

/// Amazon Linux 2023, x86_64, the current AMI id (public SSM parameter).
pub const AL2023_PARAMETER: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

/// The image hosts boot from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ami {
    pub id: String,
    pub root_device: String,
}

impl Aws {
    /// The AMI: `image` when given (a baked one), else Amazon Linux 2023 from SSM. Checked
    /// to exist and to be x86_64.
    pub async fn ami(&self, image: Option<&str>) -> Result<Ami, AwsError> {
        let id = match image {
            Some(i) => i.to_string(),
            None => {
                let r = self
                    .ssm
                    .get_parameter()
                    .name(AL2023_PARAMETER)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("ssm:GetParameter", &self.endpoint, e))?;
                r.parameter().and_then(|p| p.value()).map(str::to_string).ok_or_else(|| AwsError::Setup {
                    what: format!("SSM parameter {AL2023_PARAMETER}"),
                    detail: "has no value".into(),
                })?
            }
        };
        let r = self.ec2.describe_images().image_ids(&id).send().await.map_err(|e| {
            match AwsError::from_sdk("ec2:DescribeImages", &self.endpoint, e) {
                AwsError::Api { code, message, .. } if code.starts_with("InvalidAMIID") => {
                    AwsError::UnknownAmi { ami: id.clone(), region: self.region.clone(), message }
                }
                other => other,
            }
        })?;
        let Some(img) = r.images().first() else {
            return Err(AwsError::UnknownAmi {
                ami: id,
                region: self.region.clone(),
                message: "DescribeImages found nothing".into(),
            });
        };
        if let Some(a) = img.architecture()
            && *a != aws_sdk_ec2::types::ArchitectureValues::X8664
        {
            return Err(AwsError::Setup {
                what: format!("AMI {id}"),
                detail: format!("is {a}, Flotilla's hosts are x86_64"),
            });
        }
        Ok(Ami { id, root_device: img.root_device_name().unwrap_or("/dev/xvda").to_string() })
    }

    /// Refuses an instance type that is not x86_64 (the AMI is) or that EC2 does not know.
    pub async fn check_instance_type(&self, instance_type: &str) -> Result<(), AwsError> {
        let r =
            self.ec2.describe_instance_types().instance_types(InstanceType::from(instance_type)).send().await.map_err(
                |e| match AwsError::from_sdk("ec2:DescribeInstanceTypes", &self.endpoint, e) {
                    AwsError::Api { code, .. } if code.contains("InvalidInstanceType") => {
                        AwsError::UnknownInstanceType(instance_type.to_string())
                    }
                    other => other,
                },
            )?;
        let Some(t) = r.instance_types().first() else {
            return Err(AwsError::UnknownInstanceType(instance_type.to_string()));
        };
        let archs = t.processor_info().map(|p| p.supported_architectures().to_vec()).unwrap_or_default();
        if !archs.is_empty() && !archs.contains(&ArchitectureType::X8664) {
            return Err(AwsError::Architecture {
                instance_type: instance_type.to_string(),
                arch: archs.iter().map(|a| a.as_str().to_string()).collect::<Vec<_>>().join("/"),
            });
        }
        Ok(())
    }
}
