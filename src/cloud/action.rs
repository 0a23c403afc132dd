//! The cloud API actions berth calls, and the size of EC2's (or Auto Scaling's) token bucket for each
//! (FACTS.md §1). Plain data below both the rate limiter and the metrics that label calls by action.

/// The cloud API actions berth calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    CreateFleet,
    RunInstances,
    TerminateInstances,
    DescribeInstances,
    DescribeInstanceTypes,
    DescribeInstanceTypeOfferings,
    DescribeSpotPriceHistory,
    DescribeImages,
    DescribeSubnets,
    DescribeSecurityGroups,
    DescribeLaunchTemplates,
    DescribeLaunchTemplateVersions,
    CreateLaunchTemplate,
    DeleteLaunchTemplate,
    CreateTags,
    DescribeAutoScalingGroups,
    SetDesiredCapacity,
    TerminateInstanceInAutoScalingGroup,
}

/// A token bucket: `max` tokens, `refill` tokens per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSize {
    pub max: u32,
    pub refill_per_second: u32,
}

const fn bucket(max: u32, refill_per_second: u32) -> BucketSize {
    BucketSize {
        max,
        refill_per_second,
    }
}

/// EC2's non-mutating (filtered or paginated) bucket.
pub const NON_MUTATING: BucketSize = bucket(100, 20);
/// EC2's mutating bucket.
pub const MUTATING: BucketSize = bucket(50, 5);

impl Action {
    pub const ALL: [Action; 18] = [
        Action::CreateFleet,
        Action::RunInstances,
        Action::TerminateInstances,
        Action::DescribeInstances,
        Action::DescribeInstanceTypes,
        Action::DescribeInstanceTypeOfferings,
        Action::DescribeSpotPriceHistory,
        Action::DescribeImages,
        Action::DescribeSubnets,
        Action::DescribeSecurityGroups,
        Action::DescribeLaunchTemplates,
        Action::DescribeLaunchTemplateVersions,
        Action::CreateLaunchTemplate,
        Action::DeleteLaunchTemplate,
        Action::CreateTags,
        Action::DescribeAutoScalingGroups,
        Action::SetDesiredCapacity,
        Action::TerminateInstanceInAutoScalingGroup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::CreateFleet => "CreateFleet",
            Action::RunInstances => "RunInstances",
            Action::TerminateInstances => "TerminateInstances",
            Action::DescribeInstances => "DescribeInstances",
            Action::DescribeInstanceTypes => "DescribeInstanceTypes",
            Action::DescribeInstanceTypeOfferings => "DescribeInstanceTypeOfferings",
            Action::DescribeSpotPriceHistory => "DescribeSpotPriceHistory",
            Action::DescribeImages => "DescribeImages",
            Action::DescribeSubnets => "DescribeSubnets",
            Action::DescribeSecurityGroups => "DescribeSecurityGroups",
            Action::DescribeLaunchTemplates => "DescribeLaunchTemplates",
            Action::DescribeLaunchTemplateVersions => "DescribeLaunchTemplateVersions",
            Action::CreateLaunchTemplate => "CreateLaunchTemplate",
            Action::DeleteLaunchTemplate => "DeleteLaunchTemplate",
            Action::CreateTags => "CreateTags",
            Action::DescribeAutoScalingGroups => "DescribeAutoScalingGroups",
            Action::SetDesiredCapacity => "SetDesiredCapacity",
            Action::TerminateInstanceInAutoScalingGroup => "TerminateInstanceInAutoScalingGroup",
        }
    }

    pub fn is_auto_scaling(self) -> bool {
        matches!(
            self,
            Action::DescribeAutoScalingGroups
                | Action::SetDesiredCapacity
                | Action::TerminateInstanceInAutoScalingGroup
        )
    }

    /// The key of the request bucket: the action itself for EC2, one shared key for Auto Scaling.
    pub fn bucket_key(self) -> &'static str {
        if self.is_auto_scaling() {
            "autoscaling"
        } else {
            self.name()
        }
    }

    /// EC2's request bucket for this action (FACTS.md §1). Every Describe berth makes is filtered or paginated.
    pub fn request_bucket(self) -> BucketSize {
        match self {
            Action::RunInstances => bucket(5, 2),
            Action::TerminateInstances => bucket(100, 5),
            Action::CreateFleet | Action::CreateLaunchTemplate | Action::DeleteLaunchTemplate => {
                MUTATING
            }
            Action::CreateTags => bucket(100, 10),
            Action::DescribeInstances
            | Action::DescribeInstanceTypes
            | Action::DescribeInstanceTypeOfferings
            | Action::DescribeSpotPriceHistory
            | Action::DescribeImages
            | Action::DescribeSubnets
            | Action::DescribeSecurityGroups
            | Action::DescribeLaunchTemplates
            | Action::DescribeLaunchTemplateVersions => NON_MUTATING,
            // Not published (FACTS.md §1): berth's own conservative choice for the one shared bucket.
            Action::DescribeAutoScalingGroups
            | Action::SetDesiredCapacity
            | Action::TerminateInstanceInAutoScalingGroup => bucket(20, 2),
        }
    }

    /// EC2's resource bucket (tokens per instance), for the actions that have one. CreateFleet has none listed;
    /// whether it shares RunInstances' is unconfirmed, so berth does not charge it.
    pub fn resource_bucket(self) -> Option<BucketSize> {
        match self {
            Action::RunInstances => Some(bucket(1000, 2)),
            Action::TerminateInstances => Some(bucket(1000, 20)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_ec2_table() {
        assert_eq!(Action::RunInstances.request_bucket(), bucket(5, 2));
        assert_eq!(
            Action::RunInstances.resource_bucket(),
            Some(bucket(1000, 2))
        );
        assert_eq!(
            Action::TerminateInstances.resource_bucket(),
            Some(bucket(1000, 20))
        );
        assert_eq!(Action::CreateFleet.request_bucket(), bucket(50, 5));
        assert_eq!(Action::DescribeInstances.request_bucket(), bucket(100, 20));
        assert_eq!(Action::CreateFleet.resource_bucket(), None);
        assert_eq!(
            Action::SetDesiredCapacity.bucket_key(),
            Action::DescribeAutoScalingGroups.bucket_key()
        );
        let mut names: Vec<_> = Action::ALL.iter().map(|a| a.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
    }
}
