# An EC2 image with runner-agent installed and not enabled: at first boot,
# user data rendered by `runner-userdata render` (which finds the agent at
# /usr/bin/runner-agent) writes /etc/runner-agent/config.toml and enables
# the unit. See docs/install.md.
#
#   packer build -var-file=release.pkrvars.hcl -var arch=aarch64 packaging/packer
#
# Packer 1.6.6 or later (the amazon-ebs builder is built in up to 1.7;
# later versions need `packer plugins install github.com/hashicorp/amazon`).

locals {
  # An unknown arch in agent_url fails here, before any instance starts.
  agent_url     = var.agent_url[var.arch]
  agent_sha256  = var.agent_sha256[var.arch]
  runner_sha256 = lookup(var.runner_sha256, var.arch, "")
  instance_type = var.instance_type != "" ? var.instance_type : { x86_64 = "t3.small", aarch64 = "t4g.small" }[var.arch]
  ec2_arch      = var.arch == "aarch64" ? "arm64" : "x86_64"
  stamp         = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "runner-agent" {
  region        = var.region
  instance_type = local.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = var.ssh_username
  ami_name      = "${var.ami_name_prefix}-${var.arch}-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = local.ec2_arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = var.source_ami_owners
    most_recent = true
  }
  # The digest, not the URL: a presigned URL would leak its signature.
  tags = {
    Name              = "${var.ami_name_prefix}-${var.arch}-${local.stamp}"
    RunnerAgentSha256 = local.agent_sha256
    RunnerVersion     = var.runner_version
  }
}

build {
  sources = ["source.amazon-ebs.runner-agent"]

  provisioner "shell" {
    script          = "${path.root}/provision.sh"
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    environment_vars = [
      "AGENT_URL=${local.agent_url}",
      "AGENT_SHA256=${local.agent_sha256}",
      "RUNNER_VERSION=${var.runner_version}",
      "RUNNER_SHA256=${local.runner_sha256}",
      "RUNNER_USER=${var.runner_user}",
      "RUNNER_INSTALL_DIR=${var.runner_install_dir}",
      "RUNNER_RELEASE_BASE_URL=${var.runner_release_base_url}",
      "PACKAGES=${join(" ", var.packages)}",
    ]
  }
}
