"""Kubernetes backends: the `agenticsessions` catalog and TokenReview/SubjectAccessReview authorization."""
