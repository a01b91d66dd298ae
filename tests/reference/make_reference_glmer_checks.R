# glmer's safety checks (glmerControl's defaults: allow.n = TRUE in checkNlevels/checkZdims):
# a one-level grouping factor is refused, an observation-level random effect is allowed (it
# models overdispersion), more random effects than observations are refused.
#
#   Rscript tests/reference/make_reference_glmer_checks.R    # run from the repository root
#
# Writes tests/reference/data/glmer_checks_*.csv and tests/reference/glmer_checks.json.
suppressPackageStartupMessages({ library(lme4); library(jsonlite) })
dir <- "tests/reference"
dat <- file.path(dir, "data")
ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)
first_error <- function(expr) tryCatch({ force(expr); NA_character_ },
                                       error = function(e) conditionMessage(e))

# 1. one sampled level: cbpp, one herd
one <- subset(lme4::cbpp, herd == "1")
one$herd <- as.character(one$herd)
write.csv(one, file.path(dat, "glmer_checks_one_herd.csv"), row.names = FALSE)
nlev1 <- first_error(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), one,
                           family = binomial, control = ctrl))

# 2. observation-level random effect on counts: allowed by glmer
set.seed(7)
n <- 60
ol <- data.frame(obs = sprintf("o%02d", 1:n), x = round(rnorm(n), 4))
ol$y <- rpois(n, exp(1 + 0.4 * ol$x + rnorm(n, 0, 0.6)))
write.csv(ol, file.path(dat, "glmer_checks_obs_level.csv"), row.names = FALSE)
m_ol <- glmer(y ~ x + (1 | obs), ol, family = poisson, control = ctrl)

# 3. more random effects than observations: a random slope on 8 rows of 8 levels
few <- ol[1:8, ]
few$g <- sprintf("g%d", 1:8)
write.csv(few, file.path(dat, "glmer_checks_slope.csv"), row.names = FALSE)
nre <- first_error(glmer(y ~ x + (x | g), few, family = poisson, control = ctrl))

out <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))),
  nlev_gtr_1 = list(data = "glmer_checks_one_herd.csv",
                    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)",
                    error = nlev1),
  obs_level = list(data = "glmer_checks_obs_level.csv", formula = "y ~ x + (1 | obs)",
                   deviance = deviance(m_ol), minus2loglik = -2 * as.numeric(logLik(m_ol)),
                   fixef = as.list(fixef(m_ol)), theta = unname(getME(m_ol, "theta"))),
  nobs_vs_nRE = list(data = "glmer_checks_slope.csv", formula = "y ~ x + (x | g)", error = nre))
write_json(out, file.path(dir, "glmer_checks.json"), auto_unbox = TRUE, digits = NA, pretty = TRUE)
