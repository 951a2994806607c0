# Inputs of runner-agent.pkr.hcl. Required: agent_url and agent_sha256 (see
# example.pkrvars.hcl). Everything else has a default: Ubuntu 24.04 on
# x86_64 in us-east-1, no runner baked in.

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or aarch64 (Graviton): picks the source AMI, the instance type and the tarball."
  validation {
    condition     = contains(["x86_64", "aarch64"], var.arch)
    error_message = "The arch must be x86_64 or aarch64."
  }
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Build instance type; empty: t3.small for x86_64, t4g.small for aarch64."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the build instance; empty: the default VPC's."
}

# The source AMI: the newest image with this name and owner, of the arch
# above. Ubuntu 24.04 by default. Amazon Linux 2023 instead:
#   source_ami_name   = "al2023-ami-2023.*-kernel-6.*"
#   source_ami_owners = ["amazon"]
#   ssh_username      = "ec2-user"
variable "source_ami_name" {
  type    = string
  default = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-*-server-*"
}

variable "source_ami_owners" {
  type    = list(string)
  default = ["099720109477"] # Canonical
}

variable "ssh_username" {
  type    = string
  default = "ubuntu"
}

variable "ami_name_prefix" {
  type    = string
  default = "runner-agent"
}

# The release tarball per arch, as scripts/dist names it, and its SHA-256
# from the release's SHA256SUMS: the build fails unless the download
# matches.
variable "agent_url" {
  type        = map(string)
  description = "Release tarball URL per arch: { x86_64 = \"...\", aarch64 = \"...\" }."
}

variable "agent_sha256" {
  type        = map(string)
  description = "SHA-256 (64 lower-case hex) of each tarball, keyed by arch as agent_url."
  validation {
    condition     = length([for sum in values(var.agent_sha256) : sum if regex_replace(sum, "^[0-9a-f]{64}$", "") != ""]) == 0
    error_message = "Each agent_sha256 value must be 64 lower-case hexadecimal characters."
  }
}

# Optional: bake actions/runner into the image with `runner-agent install`.
# Instances reuse it when their config names the same runner.version,
# runner.install_dir and runner.user; otherwise the agent downloads the
# configured version at boot.
variable "runner_version" {
  type        = string
  default     = ""
  description = "actions/runner version to bake in, e.g. 2.331.0; empty: none."
  validation {
    condition     = var.runner_version == "" || regex_replace(var.runner_version, "^[0-9]{1,6}[.][0-9]{1,6}[.][0-9]{1,6}$", "") == ""
    error_message = "The runner_version must be empty or three dot-separated numbers, e.g. 2.331.0."
  }
}

variable "runner_sha256" {
  type        = map(string)
  default     = {}
  description = "SHA-256 of the runner tarball per arch; none for an arch: the agent's built-in table, else the build fails."
  validation {
    condition     = length([for sum in values(var.runner_sha256) : sum if regex_replace(sum, "^[0-9a-f]{64}$", "") != ""]) == 0
    error_message = "Each runner_sha256 value must be 64 lower-case hexadecimal characters."
  }
}

variable "runner_user" {
  type        = string
  default     = "runner"
  description = "Owner of the baked runner, created if missing; empty: root."
}

variable "runner_install_dir" {
  type    = string
  default = "/opt/actions-runner"
}

variable "runner_release_base_url" {
  type        = string
  default     = "https://github.com/actions/runner/releases/download"
  description = "runner.release_base_url for the bake: a mirror of the runner releases."
}

variable "packages" {
  type        = list(string)
  default     = []
  description = "OS packages to bake in (dnf or apt-get), e.g. the runner's ICU and docker, so boot installs nothing."
}
